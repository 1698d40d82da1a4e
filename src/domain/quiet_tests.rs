use super::*;
use proptest::prelude::*;

const US: &str = "+14155550123";
const ALASKA: &str = "+19075550123";
const HAWAII: &str = "+18085550123";
const RUSSIA: &str = "+74951234567";
const UNKNOWN: &str = "+9991234567";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a test instant")
}

fn hm(s: &str) -> NaiveTime {
    parse_time("test", s).expect("a test time")
}

fn rule(start: &str, end: &str, zone: &str, action: QuietAction) -> QuietHours {
    QuietHours::new(hm(start), hm(end), zone.parse().expect("a zone"), action).expect("a rule")
}

fn night(zone: &str) -> QuietHours {
    rule("21:00", "08:00", zone, QuietAction::Wait)
}

fn wait(s: &str) -> QuietVerdict {
    QuietVerdict::WaitUntil(at(s))
}

use QuietVerdict::{Allowed, Drop};

#[test]
fn a_wrapping_window_covers_the_night() {
    // Paris in June is UTC+2.
    let r = night("Europe/Paris");
    assert_eq!(verdict(at("2024-06-12T18:59:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-06-12T19:00:00Z"), &r, US),
        wait("2024-06-13T06:00:00Z")
    );
    assert_eq!(
        verdict(at("2024-06-12T22:00:00Z"), &r, US),
        wait("2024-06-13T06:00:00Z")
    );
    assert_eq!(
        verdict(at("2024-06-13T05:59:59Z"), &r, US),
        wait("2024-06-13T06:00:00Z")
    );
    assert_eq!(verdict(at("2024-06-13T06:00:00Z"), &r, US), Allowed);
    assert_eq!(verdict(at("2024-06-13T12:00:00Z"), &r, US), Allowed);
}

#[test]
fn a_window_within_one_day() {
    let r = rule("12:00", "14:00", "UTC", QuietAction::Wait);
    assert_eq!(verdict(at("2024-06-12T11:59:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-06-12T12:00:00Z"), &r, US),
        wait("2024-06-12T14:00:00Z")
    );
    assert_eq!(
        verdict(at("2024-06-12T13:59:59.999Z"), &r, US),
        wait("2024-06-12T14:00:00Z")
    );
    assert_eq!(verdict(at("2024-06-12T14:00:00Z"), &r, US), Allowed);
    assert_eq!(verdict(at("2024-06-12T23:30:00Z"), &r, US), Allowed);
    assert_eq!(verdict(at("2024-06-12T00:30:00Z"), &r, US), Allowed);
}

#[test]
fn a_window_from_or_to_midnight() {
    let r = rule("00:00", "06:00", "UTC", QuietAction::Wait);
    assert_eq!(verdict(at("2024-06-11T23:59:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-06-12T00:00:00Z"), &r, US),
        wait("2024-06-12T06:00:00Z")
    );
    let r = rule("22:00", "00:00", "UTC", QuietAction::Wait);
    assert_eq!(
        verdict(at("2024-06-12T23:59:00Z"), &r, US),
        wait("2024-06-13T00:00:00Z")
    );
    assert_eq!(verdict(at("2024-06-13T00:00:00Z"), &r, US), Allowed);
}

#[test]
fn drop_drops_only_inside_the_window() {
    let r = rule("21:00", "08:00", "Europe/Paris", QuietAction::Drop);
    assert_eq!(verdict(at("2024-06-12T19:00:00Z"), &r, US), Drop);
    assert_eq!(verdict(at("2024-06-13T05:59:59Z"), &r, US), Drop);
    assert_eq!(verdict(at("2024-06-13T06:00:00Z"), &r, US), Allowed);
}

#[test]
fn paris_spring_forward() {
    // 2024-03-31 02:00 CET (01:00Z) jumps to 03:00 CEST.
    let r = rule("22:00", "02:30", "Europe/Paris", QuietAction::Wait);
    // 02:30 never happens that night: quiet ends at the jump.
    assert_eq!(
        verdict(at("2024-03-31T00:30:00Z"), &r, US),
        wait("2024-03-31T01:00:00Z")
    );
    assert_eq!(
        verdict(at("2024-03-31T00:59:59Z"), &r, US),
        wait("2024-03-31T01:00:00Z")
    );
    assert_eq!(verdict(at("2024-03-31T01:00:00Z"), &r, US), Allowed);
    // A start that never happens begins quiet at the jump.
    let r = rule("02:30", "06:00", "Europe/Paris", QuietAction::Wait);
    assert_eq!(verdict(at("2024-03-31T00:59:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-03-31T01:00:00Z"), &r, US),
        wait("2024-03-31T04:00:00Z")
    );
    // A night across the change: 21:00 CET to 08:00 CEST.
    let r = night("Europe/Paris");
    assert_eq!(verdict(at("2024-03-30T19:59:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-03-30T20:00:00Z"), &r, US),
        wait("2024-03-31T06:00:00Z")
    );
}

#[test]
fn paris_fall_back() {
    // 2024-10-27 03:00 CEST (01:00Z) falls back to 02:00 CET, so 02:00-03:00
    // happens twice: 00:00Z-01:00Z, then 01:00Z-02:00Z.
    let r = rule("22:00", "02:30", "Europe/Paris", QuietAction::Wait);
    assert_eq!(
        verdict(at("2024-10-27T00:15:00Z"), &r, US),
        wait("2024-10-27T00:30:00Z")
    );
    assert_eq!(verdict(at("2024-10-27T00:30:00Z"), &r, US), Allowed);
    // The second 02:15 is not quiet again: the period ended at the first
    // 02:30.
    assert_eq!(verdict(at("2024-10-27T01:15:00Z"), &r, US), Allowed);
    // A start in the repeated hour begins at its first pass.
    let r = rule("02:30", "06:00", "Europe/Paris", QuietAction::Wait);
    assert_eq!(verdict(at("2024-10-27T00:29:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-10-27T00:30:00Z"), &r, US),
        wait("2024-10-27T05:00:00Z")
    );
    // A night across the change: 21:00 CEST to 08:00 CET.
    let r = night("Europe/Paris");
    assert_eq!(
        verdict(at("2024-10-26T19:00:00Z"), &r, US),
        wait("2024-10-27T07:00:00Z")
    );
    assert_eq!(verdict(at("2024-10-27T07:00:00Z"), &r, US), Allowed);
}

#[test]
fn new_york_spring_forward() {
    // 2024-03-10 02:00 EST (07:00Z) jumps to 03:00 EDT.
    let r = rule("21:00", "02:30", "America/New_York", QuietAction::Wait);
    assert_eq!(
        verdict(at("2024-03-10T06:30:00Z"), &r, US),
        wait("2024-03-10T07:00:00Z")
    );
    assert_eq!(verdict(at("2024-03-10T07:00:00Z"), &r, US), Allowed);
    // 21:00 EST is 02:00Z, 08:00 EDT is 12:00Z.
    let r = night("America/New_York");
    assert_eq!(verdict(at("2024-03-10T01:59:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-03-10T03:00:00Z"), &r, US),
        wait("2024-03-10T12:00:00Z")
    );
}

#[test]
fn new_york_fall_back() {
    // 2024-11-03 02:00 EDT (06:00Z) falls back to 01:00 EST, so 01:00-02:00
    // happens twice: 05:00Z-06:00Z, then 06:00Z-07:00Z.
    let r = rule("22:00", "01:30", "America/New_York", QuietAction::Wait);
    assert_eq!(
        verdict(at("2024-11-03T05:15:00Z"), &r, US),
        wait("2024-11-03T05:30:00Z")
    );
    assert_eq!(verdict(at("2024-11-03T05:30:00Z"), &r, US), Allowed);
    assert_eq!(verdict(at("2024-11-03T06:15:00Z"), &r, US), Allowed);
    let r = rule("01:30", "06:00", "America/New_York", QuietAction::Wait);
    assert_eq!(verdict(at("2024-11-03T05:29:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-11-03T05:30:00Z"), &r, US),
        wait("2024-11-03T11:00:00Z")
    );
    // 21:00 EDT is 01:00Z, 08:00 EST is 13:00Z.
    let r = night("America/New_York");
    assert_eq!(
        verdict(at("2024-11-03T01:00:00Z"), &r, US),
        wait("2024-11-03T13:00:00Z")
    );
}

#[test]
fn a_us_number_waits_for_every_zone() {
    // June: St Johns -2:30, Halifax -3, New York -4 ... Los Angeles and
    // Phoenix -7. The last zone to reach 08:00 is Los Angeles, at 15:00Z.
    let r = night("auto");
    // 22:00 in New York, 19:00 in Los Angeles.
    assert_eq!(
        verdict(at("2024-06-12T02:00:00Z"), &r, US),
        wait("2024-06-12T15:00:00Z")
    );
    // 20:30 in Los Angeles, 23:30 in New York.
    assert_eq!(
        verdict(at("2024-06-12T03:30:00Z"), &r, US),
        wait("2024-06-12T15:00:00Z")
    );
    // 08:00 in New York but 05:00 in Los Angeles.
    assert_eq!(
        verdict(at("2024-06-12T12:00:00Z"), &r, US),
        wait("2024-06-12T15:00:00Z")
    );
    assert_eq!(verdict(at("2024-06-12T15:00:00Z"), &r, US), Allowed);
    // St Johns reaches 21:00 first, at 23:30Z.
    assert_eq!(verdict(at("2024-06-12T23:29:59Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-06-12T23:30:00Z"), &r, US),
        wait("2024-06-13T15:00:00Z")
    );
    let r = rule("21:00", "08:00", "auto", QuietAction::Drop);
    assert_eq!(verdict(at("2024-06-12T03:30:00Z"), &r, US), Drop);
    assert_eq!(verdict(at("2024-06-12T16:00:00Z"), &r, US), Allowed);
}

#[test]
fn alaska_and_hawaii_have_their_own_clocks() {
    let r = night("auto");
    // 07:00 in Alaska (-8 in June); every other US zone is past 08:00.
    assert_eq!(
        verdict(at("2024-06-12T15:00:00Z"), &r, ALASKA),
        wait("2024-06-12T16:00:00Z")
    );
    assert_eq!(verdict(at("2024-06-12T15:00:00Z"), &r, US), Allowed);
    assert_eq!(
        verdict(at("2024-06-12T05:30:00Z"), &r, ALASKA),
        wait("2024-06-12T16:00:00Z")
    );
    // 17:00 in Hawaii (-10), 23:00 in New York.
    assert_eq!(verdict(at("2024-06-12T03:00:00Z"), &r, HAWAII), Allowed);
    assert_eq!(
        verdict(at("2024-06-12T07:00:00Z"), &r, HAWAII),
        wait("2024-06-12T18:00:00Z")
    );
}

#[test]
fn an_unknown_calling_code_is_read_in_utc() {
    assert!(zones_for_number(UNKNOWN).is_empty());
    let r = night("auto");
    for number in [UNKNOWN, "", "+", "garbage"] {
        assert_eq!(verdict(at("2024-06-12T20:59:59Z"), &r, number), Allowed);
        assert_eq!(
            verdict(at("2024-06-12T21:00:00Z"), &r, number),
            wait("2024-06-13T08:00:00Z")
        );
    }
}

#[test]
fn a_fixed_zone_ignores_the_number() {
    let r = night("Asia/Tokyo");
    // 21:00 in Tokyo, 08:00 in New York.
    assert_eq!(
        verdict(at("2024-06-12T12:00:00Z"), &r, US),
        wait("2024-06-12T23:00:00Z")
    );
    assert_eq!(
        verdict(at("2024-06-12T12:00:00Z"), &r, UNKNOWN),
        wait("2024-06-12T23:00:00Z")
    );
    assert_eq!(r.zones(US), &[chrono_tz::Asia::Tokyo]);
}

#[test]
fn russia_leaves_three_hours_a_day() {
    // Kaliningrad (+2) reaches 08:00 at 06:00Z, Kamchatka (+12) 21:00 at
    // 09:00Z; each wait hops from zone to zone to the same instant.
    let r = night("auto");
    assert_eq!(
        verdict(at("2024-06-12T05:00:00Z"), &r, RUSSIA),
        wait("2024-06-12T06:00:00Z")
    );
    assert_eq!(verdict(at("2024-06-12T06:00:00Z"), &r, RUSSIA), Allowed);
    assert_eq!(verdict(at("2024-06-12T08:59:59Z"), &r, RUSSIA), Allowed);
    assert_eq!(
        verdict(at("2024-06-12T09:00:00Z"), &r, RUSSIA),
        wait("2024-06-13T06:00:00Z")
    );
}

#[test]
fn windows_that_never_meet_fall_back_to_the_first_zone() {
    // Allowed only 07:00-08:00 local: no hour is allowed in all of Russia.
    let r = rule("08:00", "07:00", "auto", QuietAction::Wait);
    assert_eq!(zones_for_number(RUSSIA)[0], chrono_tz::Europe::Moscow);
    // 05:00 in Moscow (+3): wait for 07:00 there.
    assert_eq!(
        verdict(at("2024-06-12T02:00:00Z"), &r, RUSSIA),
        wait("2024-06-12T04:00:00Z")
    );
    // 07:30 in Moscow, quiet elsewhere: Moscow decides.
    assert_eq!(verdict(at("2024-06-12T04:30:00Z"), &r, RUSSIA), Allowed);
    let r = rule("08:00", "07:00", "auto", QuietAction::Drop);
    assert_eq!(verdict(at("2024-06-12T02:00:00Z"), &r, RUSSIA), Drop);
    assert_eq!(verdict(at("2024-06-12T04:30:00Z"), &r, RUSSIA), Allowed);
}

#[test]
fn a_rule_built_with_equal_bounds_is_never_quiet() {
    let r = QuietHours {
        start: hm("21:00"),
        end: hm("21:00"),
        time_zone: ZoneChoice::FromNumber,
        action: QuietAction::Drop,
    };
    assert_eq!(verdict(at("2024-06-12T21:00:00Z"), &r, UNKNOWN), Allowed);
}

#[test]
fn calling_codes_pick_the_longest_prefix() {
    use chrono_tz::{America, Asia, Australia, Europe, Pacific};
    assert_eq!(zones_for_number(US).len(), 7);
    assert_eq!(zones_for_number(US)[0], America::New_York);
    assert_eq!(zones_for_number(ALASKA), &[America::Anchorage]);
    assert_eq!(zones_for_number(HAWAII), &[Pacific::Honolulu]);
    assert_eq!(zones_for_number("19075550123"), &[America::Anchorage]);
    assert_eq!(zones_for_number("+33612345678"), &[Europe::Paris]);
    assert_eq!(zones_for_number("+353871234567"), &[Europe::Dublin]);
    assert_eq!(zones_for_number("+77011234567"), &[Asia::Almaty]);
    assert_eq!(zones_for_number(RUSSIA).len(), 11);
    assert_eq!(zones_for_number("+61298765432"), &[Australia::Sydney]);
    assert_eq!(zones_for_number("+61412345678").len(), 5);
    assert_eq!(zones_for_number("+3"), &[] as &[Tz]);
}

#[test]
fn the_calling_code_table_is_well_formed() {
    let mut seen = std::collections::HashSet::new();
    for (prefix, zones) in CALLING_CODES {
        assert!(
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()),
            "{prefix}"
        );
        assert!(!prefix.starts_with('0'), "{prefix}");
        assert!(seen.insert(*prefix), "duplicate {prefix}");
        assert!(!zones.is_empty(), "{prefix}");
        let distinct: std::collections::HashSet<_> = zones.iter().collect();
        assert_eq!(distinct.len(), zones.len(), "{prefix}");
    }
}

#[test]
fn every_required_country_is_covered() {
    let countries = [
        ("US", "+12125550123", 7),
        ("Canada", "+14165550123", 7),
        ("UK", "+447911123456", 1),
        ("Ireland", "+353871234567", 1),
        ("Austria", "+436641234567", 1),
        ("Belgium", "+32471234567", 1),
        ("Bulgaria", "+359881234567", 1),
        ("Croatia", "+385911234567", 1),
        ("Cyprus", "+35799123456", 1),
        ("Czechia", "+420601123456", 1),
        ("Denmark", "+4520123456", 1),
        ("Estonia", "+37251234567", 1),
        ("Finland", "+358401234567", 1),
        ("France", "+33612345678", 1),
        ("Germany", "+4915112345678", 1),
        ("Greece", "+306912345678", 1),
        ("Hungary", "+36201234567", 1),
        ("Italy", "+393123456789", 1),
        ("Latvia", "+37121234567", 1),
        ("Lithuania", "+37061234567", 1),
        ("Luxembourg", "+352621123456", 1),
        ("Malta", "+35679123456", 1),
        ("Netherlands", "+31612345678", 1),
        ("Poland", "+48512345678", 1),
        ("Portugal", "+351912345678", 2),
        ("Romania", "+40712345678", 1),
        ("Slovakia", "+421912123456", 1),
        ("Slovenia", "+38631123456", 1),
        ("Spain", "+34612345678", 2),
        ("Sweden", "+46701234567", 1),
        ("Iceland", "+3546111234", 1),
        ("Liechtenstein", "+4237812345", 1),
        ("Norway", "+4741234567", 1),
        ("Switzerland", "+41791234567", 1),
        ("Turkey", "+905321234567", 1),
        ("Russia", "+79161234567", 11),
        ("Ukraine", "+380501234567", 1),
        ("Israel", "+972501234567", 1),
        ("UAE", "+971501234567", 1),
        ("Saudi Arabia", "+966501234567", 1),
        ("Egypt", "+201001234567", 1),
        ("South Africa", "+27821234567", 1),
        ("Nigeria", "+2348031234567", 1),
        ("Kenya", "+254712345678", 1),
        ("India", "+919876543210", 1),
        ("Pakistan", "+923001234567", 1),
        ("Bangladesh", "+8801712345678", 1),
        ("Indonesia", "+6281234567890", 3),
        ("Philippines", "+639171234567", 1),
        ("Vietnam", "+84912345678", 1),
        ("Thailand", "+66812345678", 1),
        ("Malaysia", "+60123456789", 1),
        ("Singapore", "+6581234567", 1),
        ("China", "+8613812345678", 1),
        ("Hong Kong", "+85291234567", 1),
        ("Taiwan", "+886912345678", 1),
        ("Japan", "+819012345678", 1),
        ("South Korea", "+821012345678", 1),
        ("Australia", "+61412345678", 5),
        ("New Zealand", "+64211234567", 1),
        ("Mexico", "+525512345678", 4),
        ("Brazil", "+5511912345678", 3),
        ("Argentina", "+5491123456789", 1),
        ("Chile", "+56912345678", 1),
        ("Colombia", "+573001234567", 1),
        ("Peru", "+51912345678", 1),
    ];
    for (country, number, zones) in countries {
        assert_eq!(zones_for_number(number).len(), zones, "{country} {number}");
    }
}

#[test]
fn serde_round_trip_json() {
    let text = r#"{"start":"21:00","end":"08:00","time_zone":"auto","action":"wait"}"#;
    let q: QuietHours = serde_json::from_str(text).unwrap();
    assert_eq!(q, night("auto"));
    assert_eq!(serde_json::to_string(&q).unwrap(), text);

    let text = r#"{"start":"12:00","end":"14:30","time_zone":"America/New_York","action":"drop"}"#;
    let q: QuietHours = serde_json::from_str(text).unwrap();
    assert_eq!(
        q,
        rule("12:00", "14:30", "America/New_York", QuietAction::Drop)
    );
    assert_eq!(serde_json::to_string(&q).unwrap(), text);
}

#[test]
fn serde_defaults() {
    let q: QuietHours = serde_json::from_str(r#"{"start":"21:00","end":"08:00"}"#).unwrap();
    assert_eq!(q.time_zone, ZoneChoice::FromNumber);
    assert_eq!(q.action, QuietAction::Wait);
}

#[test]
fn serde_round_trip_toml() {
    let text = "start = \"23:15\"\nend = \"06:45\"\ntime_zone = \"Europe/Paris\"\n";
    let q: QuietHours = toml::from_str(text).unwrap();
    assert_eq!(q, rule("23:15", "06:45", "Europe/Paris", QuietAction::Wait));
    let back = toml::to_string(&q).unwrap();
    assert_eq!(toml::from_str::<QuietHours>(&back).unwrap(), q);
}

fn rejection(json: &str) -> String {
    serde_json::from_str::<QuietHours>(json)
        .expect_err(json)
        .to_string()
}

#[test]
fn malformed_times_are_rejected_by_field_and_value() {
    for bad in [
        "24:00",
        "9:00",
        "09:60",
        "21:00:00",
        "",
        " 21:00",
        "21h00",
        "ab:cd",
        "+1:00",
        "-1:00",
        "21:0",
        "٢١:٠٠",
    ] {
        let json = serde_json::json!({"start": bad, "end": "08:00"}).to_string();
        assert_eq!(
            rejection(&json),
            format!("start must be a time of day as HH:MM (00:00 to 23:59), got {bad:?}"),
        );
        let json = serde_json::json!({"start": "21:00", "end": bad}).to_string();
        assert_eq!(
            rejection(&json),
            format!("end must be a time of day as HH:MM (00:00 to 23:59), got {bad:?}"),
        );
    }
}

#[test]
fn unknown_zones_are_rejected() {
    for bad in [
        "Mars/Olympus_Mons",
        "europe/paris",
        "Auto",
        "auto ",
        "",
        "+02:00",
    ] {
        let json =
            serde_json::json!({"start": "21:00", "end": "08:00", "time_zone": bad}).to_string();
        assert_eq!(
            rejection(&json),
            format!(
                "time_zone must be \"auto\" or an IANA time zone name such as \"Europe/Paris\", got {bad:?}"
            ),
        );
    }
}

#[test]
fn other_rejections() {
    assert_eq!(
        rejection(r#"{"start":"21:00","end":"08:00","action":"later"}"#),
        "action must be \"wait\" or \"drop\", got \"later\""
    );
    assert_eq!(
        rejection(r#"{"start":"21:00","end":"08:00","action":"WAIT"}"#),
        "action must be \"wait\" or \"drop\", got \"WAIT\""
    );
    assert_eq!(
        rejection(r#"{"start":"21:00","end":"21:00"}"#),
        "start and end must differ, both are \"21:00\""
    );
    let unknown = rejection(r#"{"start":"21:00","end":"08:00","timezone":"UTC"}"#);
    assert!(
        unknown.starts_with("unknown field `timezone`, expected one of"),
        "{unknown}"
    );
    let missing = rejection(r#"{"end":"08:00"}"#);
    assert!(missing.starts_with("missing field `start`"), "{missing}");
    let wrong_type = rejection(r#"{"start":2100,"end":"08:00"}"#);
    assert!(wrong_type.starts_with("invalid type"), "{wrong_type}");
}

#[test]
fn a_field_path_points_at_the_rule() {
    // Callers that track paths see where the rule is; the message says which
    // of its fields is wrong.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        quiet_hours: QuietHours,
    }
    let text = r#"{"quiet_hours":{"start":"25:00","end":"08:00"}}"#;
    let mut de = serde_json::Deserializer::from_str(text);
    let err = serde_path_to_error::deserialize::<_, Outer>(&mut de).unwrap_err();
    assert_eq!(err.path().to_string(), "quiet_hours");
    assert!(err.inner().to_string().starts_with("start must be"));
}

#[test]
fn the_pieces_parse_on_their_own() {
    assert_eq!(
        "Europe/Paris".parse::<ZoneChoice>(),
        Ok(ZoneChoice::Zone(chrono_tz::Europe::Paris))
    );
    assert_eq!("auto".parse::<ZoneChoice>(), Ok(ZoneChoice::FromNumber));
    assert_eq!(ZoneChoice::FromNumber.to_string(), "auto");
    assert_eq!(
        ZoneChoice::Zone(chrono_tz::Asia::Tokyo).to_string(),
        "Asia/Tokyo"
    );
    assert_eq!("drop".parse::<QuietAction>(), Ok(QuietAction::Drop));
    assert_eq!(QuietAction::Wait.to_string(), "wait");
    assert_eq!(
        parse_time("start", "00:00"),
        Ok(NaiveTime::from_hms_opt(0, 0, 0).unwrap())
    );
    assert_eq!(
        parse_time("end", "23:59"),
        Ok(NaiveTime::from_hms_opt(23, 59, 0).unwrap())
    );
    assert_eq!(
        QuietHours::new(
            hm("08:00"),
            hm("08:00"),
            ZoneChoice::FromNumber,
            QuietAction::Wait
        ),
        Err(QuietHoursError::Empty("08:00".into()))
    );
}

#[test]
fn the_schema_describes_the_text_form() {
    use utoipa::PartialSchema;
    let schema = serde_json::to_value(QuietHours::schema()).unwrap();
    let props = &schema["properties"];
    assert_eq!(props["start"]["type"], "string");
    assert_eq!(props["time_zone"]["default"], "auto");
    assert_eq!(
        props["action"]["oneOf"][0]["enum"],
        serde_json::json!(["wait", "drop"])
    );
    assert_eq!(schema["required"], serde_json::json!(["start", "end"]));
    assert_eq!(schema["additionalProperties"], false);
}

// Property tests.

/// Zones without clock changes, where the rule is a plain test on the wall
/// clock and can be checked minute by minute.
const STEADY: &[Tz] = &[
    chrono_tz::UTC,
    chrono_tz::Asia::Tokyo,
    chrono_tz::Asia::Kolkata,
    chrono_tz::America::Phoenix,
    chrono_tz::Australia::Brisbane,
];

const CHANGING: &[Tz] = &[
    chrono_tz::Europe::Paris,
    chrono_tz::America::New_York,
    chrono_tz::America::St_Johns,
    chrono_tz::Australia::Sydney,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Europe::Dublin,
    chrono_tz::America::Santiago,
];

fn minute_of_day() -> impl Strategy<Value = NaiveTime> {
    (0u32..24, 0u32..60).prop_map(|(h, m)| NaiveTime::from_hms_opt(h, m, 0).unwrap())
}

fn a_rule(zone: ZoneChoice) -> impl Strategy<Value = QuietHours> {
    (minute_of_day(), minute_of_day())
        .prop_filter("start != end", |(s, e)| s != e)
        .prop_map(move |(start, end)| QuietHours {
            start,
            end,
            time_zone: zone,
            action: QuietAction::Wait,
        })
}

/// A minute between 2020 and 2030.
fn a_minute() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..10 * 365 * 24 * 60).prop_map(|m| at("2020-01-01T00:00:00Z") + Duration::minutes(m))
}

fn wall_clock_quiet(rule: &QuietHours, zone: Tz, t: DateTime<Utc>) -> bool {
    let local = t.with_timezone(&zone).time();
    if rule.start < rule.end {
        rule.start <= local && local < rule.end
    } else {
        local >= rule.start || local < rule.end
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn steady_zones_match_the_wall_clock(
        zones in proptest::sample::subsequence(STEADY.to_vec(), 1..=STEADY.len()),
        (start, end) in (minute_of_day(), minute_of_day()).prop_filter("start != end", |(s, e)| s != e),
        now in a_minute(),
    ) {
        let r = QuietHours { start, end, time_zone: ZoneChoice::FromNumber, action: QuietAction::Wait };
        let quiet = |t| zones.iter().any(|&z| wall_clock_quiet(&r, z, t));
        let expected = if !quiet(now) {
            Some(now)
        } else {
            (1..=HORIZON_DAYS * 24 * 60)
                .map(|m| now + Duration::minutes(m))
                .find(|&t| !quiet(t))
        };
        let got = r.first_clear(&zones, now);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn a_wait_ends_at_the_first_allowed_instant(
        zone in proptest::sample::select(CHANGING.to_vec()),
        r in a_rule(ZoneChoice::FromNumber),
        now in a_minute(),
        probe in 0.0f64..1.0,
    ) {
        let r = QuietHours { time_zone: ZoneChoice::Zone(zone), ..r };
        match verdict(now, &r, US) {
            QuietVerdict::Allowed => {}
            QuietVerdict::WaitUntil(t) => {
                prop_assert!(t > now);
                prop_assert!(t - now < Duration::days(2));
                prop_assert_eq!(verdict(t, &r, US), QuietVerdict::Allowed);
                // Anything in between is still quiet.
                let inside = now + Duration::milliseconds(((t - now).num_milliseconds() as f64 * probe) as i64);
                prop_assert_ne!(verdict(inside, &r, US), QuietVerdict::Allowed);
            }
            QuietVerdict::Drop => prop_assert!(false, "Wait rule dropped"),
        }
    }

    #[test]
    fn every_zone_is_clear_when_a_wait_ends(
        number in proptest::sample::select(vec![US, RUSSIA, "+61412345678", "+6281234567890", "+525512345678", "+5511912345678"]),
        r in a_rule(ZoneChoice::FromNumber),
        now in a_minute(),
    ) {
        if let QuietVerdict::WaitUntil(t) = verdict(now, &r, number) {
            prop_assert!(t > now);
            prop_assert_eq!(verdict(t, &r, number), QuietVerdict::Allowed);
            let zones = r.zones(number);
            // Either every zone is clear, or the windows never meet and the
            // first zone decides.
            prop_assert!(
                zones.iter().all(|&z| r.quiet_until(z, t).is_none())
                    || r.first_clear(zones, now).is_none()
            );
        }
    }

    #[test]
    fn drop_and_wait_agree_on_when_it_is_quiet(
        number in proptest::sample::select(vec![US, RUSSIA, UNKNOWN, "+33612345678"]),
        r in a_rule(ZoneChoice::FromNumber),
        now in a_minute(),
    ) {
        let dropping = QuietHours { action: QuietAction::Drop, ..r.clone() };
        let w = verdict(now, &r, number);
        let d = verdict(now, &dropping, number);
        prop_assert_eq!(w == QuietVerdict::Allowed, d == QuietVerdict::Allowed);
        prop_assert!(matches!(d, QuietVerdict::Allowed | QuietVerdict::Drop));
    }

    #[test]
    fn serde_round_trips(
        r in a_rule(ZoneChoice::FromNumber),
        zone in proptest::option::of(proptest::sample::select(CHANGING.to_vec())),
        drop in any::<bool>(),
    ) {
        let r = QuietHours {
            time_zone: zone.map_or(ZoneChoice::FromNumber, ZoneChoice::Zone),
            action: if drop { QuietAction::Drop } else { QuietAction::Wait },
            ..r
        };
        let json = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(serde_json::from_str::<QuietHours>(&json).unwrap(), r);
    }
}
