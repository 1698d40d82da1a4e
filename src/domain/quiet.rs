//! Quiet hours: the local times at which a recipient must not be texted, and
//! when the next allowed instant is. Pure: the caller passes `now`.
//!
//! The quiet period is `[start, end)` in the recipient's local time; a start
//! after the end wraps midnight (21:00–08:00). Local times are turned into
//! instants day by day, so a clock change moves the boundary with the clock:
//! a boundary the clocks skip (spring forward) falls on the first instant
//! after the jump, and one the clocks pass twice (fall back) on the first
//! pass. A period therefore never reopens because the clocks went back.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// What to do with a message that falls in quiet hours.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum QuietAction {
    /// Hold it until the quiet period is over.
    #[default]
    Wait,
    /// Do not send it at all.
    Drop,
}

impl QuietAction {
    pub fn as_str(self) -> &'static str {
        match self {
            QuietAction::Wait => "wait",
            QuietAction::Drop => "drop",
        }
    }
}

impl FromStr for QuietAction {
    type Err = QuietHoursError;
    fn from_str(s: &str) -> Result<Self, QuietHoursError> {
        match s {
            "wait" => Ok(QuietAction::Wait),
            "drop" => Ok(QuietAction::Drop),
            _ => Err(QuietHoursError::Action(s.to_owned())),
        }
    }
}

impl fmt::Display for QuietAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose clock the quiet hours are read on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ZoneChoice {
    /// One zone for every recipient.
    Zone(Tz),
    /// The zones of the recipient's calling code (see [`zones_for_number`]);
    /// written `"auto"`.
    #[default]
    FromNumber,
}

impl FromStr for ZoneChoice {
    type Err = QuietHoursError;
    fn from_str(s: &str) -> Result<Self, QuietHoursError> {
        if s == "auto" {
            return Ok(ZoneChoice::FromNumber);
        }
        s.parse::<Tz>()
            .map(ZoneChoice::Zone)
            .map_err(|_| QuietHoursError::Zone(s.to_owned()))
    }
}

impl fmt::Display for ZoneChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZoneChoice::Zone(tz) => f.write_str(tz.name()),
            ZoneChoice::FromNumber => f.write_str("auto"),
        }
    }
}

/// Each message names the field and the value it refused, because the
/// struct-level check that raises most of them hides the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuietHoursError {
    #[error("{field} must be a time of day as HH:MM (00:00 to 23:59), got {value:?}")]
    Time { field: &'static str, value: String },
    #[error(
        "time_zone must be \"auto\" or an IANA time zone name such as \"Europe/Paris\", got {0:?}"
    )]
    Zone(String),
    #[error("action must be \"wait\" or \"drop\", got {0:?}")]
    Action(String),
    #[error("start and end must differ, both are {0:?}")]
    Empty(String),
}

/// Parses a 24-hour "HH:MM"; `field` only names it in the error.
pub fn parse_time(field: &'static str, value: &str) -> Result<NaiveTime, QuietHoursError> {
    let bad = || QuietHoursError::Time {
        field,
        value: value.to_owned(),
    };
    let (h, m) = value.split_once(':').ok_or_else(bad)?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let (h, m) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    NaiveTime::from_hms_opt(h, m, 0).ok_or_else(bad)
}

fn format_time(t: NaiveTime) -> String {
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// A quiet-hours rule. Its text form, the same in config files, in the API
/// and in the database, is
/// `{"start": "21:00", "end": "08:00", "time_zone": "auto", "action": "wait"}`
/// with `time_zone` defaulting to `"auto"` and `action` to `"wait"`. The text
/// form carries minutes only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "QuietHoursForm", into = "QuietHoursForm")]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub time_zone: ZoneChoice,
    pub action: QuietAction,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(title = "QuietHours")]
/// Local times at which the recipient is not texted: `[start, end)`, wrapping
/// midnight when start is after end.
struct QuietHoursForm {
    /// First quiet minute, local time, 24-hour HH:MM.
    #[schema(example = "21:00", pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    start: String,
    /// First minute no longer quiet, local time, 24-hour HH:MM; must differ
    /// from start.
    #[schema(example = "08:00", pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    end: String,
    /// An IANA zone name, or `auto` for the zones of the recipient's calling
    /// code (a country spanning several zones is quiet when any of them is).
    #[serde(default = "auto")]
    #[schema(default = "auto", example = "Europe/Paris")]
    time_zone: String,
    /// `wait`: hold the message until quiet hours end; `drop`: do not send it.
    #[serde(default = "wait")]
    #[schema(inline, value_type = QuietAction, default = "wait")]
    action: String,
}

fn auto() -> String {
    "auto".to_owned()
}

fn wait() -> String {
    "wait".to_owned()
}

impl TryFrom<QuietHoursForm> for QuietHours {
    type Error = QuietHoursError;
    fn try_from(f: QuietHoursForm) -> Result<Self, QuietHoursError> {
        QuietHours::new(
            parse_time("start", &f.start)?,
            parse_time("end", &f.end)?,
            f.time_zone.parse()?,
            f.action.parse()?,
        )
    }
}

impl From<QuietHours> for QuietHoursForm {
    fn from(q: QuietHours) -> Self {
        QuietHoursForm {
            start: format_time(q.start),
            end: format_time(q.end),
            time_zone: q.time_zone.to_string(),
            action: q.action.as_str().to_owned(),
        }
    }
}

impl utoipa::PartialSchema for QuietHours {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <QuietHoursForm as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for QuietHours {}

/// Whether a message may go out now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuietVerdict {
    Allowed,
    /// Quiet now; this is the first instant at which it no longer is.
    WaitUntil(DateTime<Utc>),
    /// Quiet now and the rule says drop.
    Drop,
}

/// How far ahead to look for an instant at which every zone is out of quiet
/// hours. A daily rule repeats, so a week and a day covers every weekday and
/// any clock change in between.
const HORIZON_DAYS: i64 = 8;

impl QuietHours {
    /// Rejects `start == end`, which would leave it unclear whether the rule
    /// means always or never.
    pub fn new(
        start: NaiveTime,
        end: NaiveTime,
        time_zone: ZoneChoice,
        action: QuietAction,
    ) -> Result<Self, QuietHoursError> {
        if start == end {
            return Err(QuietHoursError::Empty(format_time(start)));
        }
        Ok(QuietHours {
            start,
            end,
            time_zone,
            action,
        })
    }

    /// The zones the rule is read in for this recipient: the fixed zone, the
    /// calling code's zones, or UTC when the calling code is unknown.
    pub fn zones<'a>(&'a self, e164: &str) -> &'a [Tz] {
        match &self.time_zone {
            ZoneChoice::Zone(tz) => std::slice::from_ref(tz),
            ZoneChoice::FromNumber => match zones_for_number(e164) {
                [] => &[Tz::UTC],
                zones => zones,
            },
        }
    }

    /// The quiet period that begins on local `day`, as instants. `None` for
    /// dates at the edge of what chrono represents, and for a rule whose
    /// start equals its end (only reachable by building it field by field),
    /// which is never quiet.
    fn period(&self, zone: Tz, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if self.start == self.end {
            return None;
        }
        let end_day = if self.start < self.end {
            day
        } else {
            day.succ_opt()?
        };
        Some((
            instant(zone, day.and_time(self.start)),
            instant(zone, end_day.and_time(self.end)),
        ))
    }

    /// When `t` falls in a quiet period in `zone`, the end of that period.
    fn quiet_until(&self, zone: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = t.with_timezone(&zone).date_naive();
        // The day before holds a period that wraps into today; the day after
        // matters only when a clock change crosses midnight.
        [today.pred_opt(), Some(today), today.succ_opt()]
            .into_iter()
            .flatten()
            .filter_map(|day| self.period(zone, day))
            .find(|(start, end)| *start <= t && t < *end)
            .map(|(_, end)| end)
    }

    fn is_quiet(&self, zones: &[Tz], t: DateTime<Utc>) -> bool {
        zones.iter().any(|&z| self.quiet_until(z, t).is_some())
    }

    /// The earliest instant at or after `now` at which no zone is quiet, if
    /// there is one within the horizon. Every instant skipped is quiet in
    /// some zone, since each step goes to the end of a period containing it.
    fn first_clear(&self, zones: &[Tz], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let horizon = now.checked_add_signed(Duration::days(HORIZON_DAYS))?;
        let mut t = now;
        loop {
            let mut moved = false;
            for &zone in zones {
                if let Some(end) = self.quiet_until(zone, t) {
                    t = end;
                    moved = true;
                }
            }
            if !moved {
                return Some(t);
            }
            if t > horizon {
                return None;
            }
        }
    }
}

/// Whether a message to `e164` may be sent at `now` under `rule`.
///
/// With `time_zone: "auto"` the recipient's zones come from the calling code
/// ([`zones_for_number`]); an unknown calling code is read in UTC. A country
/// spanning several zones is quiet when any of its zones is, and a wait lasts
/// until none is.
///
/// When the zones' allowed windows never meet in the next eight days (a rule
/// such as 08:00–07:00 across far-apart zones), no instant would satisfy
/// them all, so the rule is read in the first-listed zone alone: quiet there
/// means wait until it ends there (or drop); not quiet there means allowed,
/// rather than a wait until now that a re-check would repeat forever.
pub fn verdict(now: DateTime<Utc>, rule: &QuietHours, e164: &str) -> QuietVerdict {
    let zones = rule.zones(e164);
    if !rule.is_quiet(zones, now) {
        return QuietVerdict::Allowed;
    }
    let clear = match rule.first_clear(zones, now) {
        Some(t) => t,
        None => {
            let first = &zones[..1.min(zones.len())];
            if !rule.is_quiet(first, now) {
                return QuietVerdict::Allowed;
            }
            match rule.first_clear(first, now) {
                Some(t) => t,
                // One zone always has an allowed minute each day; this is
                // only reachable at the far end of chrono's range.
                None => return QuietVerdict::Drop,
            }
        }
    };
    match rule.action {
        QuietAction::Wait => QuietVerdict::WaitUntil(clear),
        QuietAction::Drop => QuietVerdict::Drop,
    }
}

/// The instant a local wall-clock time names in `zone`: the first pass of a
/// time the clocks pass twice, the first instant after the jump for a time
/// they skip.
fn instant(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    if let Some(t) = earliest(zone, local) {
        return t;
    }
    // Step a minute at a time to the first local time that exists, then
    // narrow down to the second within that minute.
    let minute = Duration::minutes(1);
    let mut before = local;
    for _ in 0..MAX_GAP_MINUTES {
        let probe = before + minute;
        if let Some(mut found) = earliest(zone, probe) {
            let (mut lo, mut hi) = (0, 60);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                match earliest(zone, before + Duration::seconds(mid)) {
                    Some(t) => {
                        hi = mid;
                        found = t;
                    }
                    None => lo = mid,
                }
            }
            return found;
        }
        before = probe;
    }
    // No zone has ever skipped two days; read it as UTC rather than fail.
    Utc.from_utc_datetime(&local)
}

/// The longest stretch of local time any zone has skipped is a day (Samoa,
/// 2011); twice that is plenty.
const MAX_GAP_MINUTES: u32 = 2 * 24 * 60;

fn earliest(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => None,
    }
}

/// The IANA zones of an E.164 number's calling code (longest prefix wins),
/// most populous first; an empty slice when the calling code is not in the
/// table, which [`verdict`] reads as UTC. Accepts the number with or without
/// its leading `+`.
pub fn zones_for_number(e164: &str) -> &'static [Tz] {
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    CALLING_CODES
        .iter()
        .filter(|(prefix, _)| digits.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(&[], |(_, zones)| zones)
}

use chrono_tz::{Africa, America, Asia, Atlantic, Australia, Europe, Indian, Pacific};

/// Calling codes, and inside NANP and Australia some area codes, to zones.
/// Where a code spans zones, the list holds one zone per distinct clock so
/// that nobody in the country is texted in their quiet hours.
static CALLING_CODES: &[(&str, &[Tz])] = &[
    // NANP: the contiguous United States and Canada unless an area code says
    // otherwise.
    (
        "1",
        &[
            America::New_York,
            America::Chicago,
            America::Denver,
            America::Phoenix,
            America::Los_Angeles,
            America::Halifax,
            America::St_Johns,
        ],
    ),
    ("1907", &[America::Anchorage]),
    ("1808", &[Pacific::Honolulu]),
    ("1787", &[America::Puerto_Rico]),
    ("1939", &[America::Puerto_Rico]),
    ("1340", &[America::St_Thomas]),
    ("1671", &[Pacific::Guam]),
    ("1670", &[Pacific::Saipan]),
    ("1684", &[Pacific::Pago_Pago]),
    ("1809", &[America::Santo_Domingo]),
    ("1829", &[America::Santo_Domingo]),
    ("1849", &[America::Santo_Domingo]),
    ("1876", &[America::Jamaica]),
    ("1658", &[America::Jamaica]),
    ("1242", &[America::Nassau]),
    ("1246", &[America::Barbados]),
    ("1868", &[America::Port_of_Spain]),
    ("1441", &[Atlantic::Bermuda]),
    // Europe
    ("30", &[Europe::Athens]),
    ("31", &[Europe::Amsterdam]),
    ("32", &[Europe::Brussels]),
    ("33", &[Europe::Paris]),
    ("34", &[Europe::Madrid, Atlantic::Canary]),
    ("36", &[Europe::Budapest]),
    ("39", &[Europe::Rome]),
    ("40", &[Europe::Bucharest]),
    ("41", &[Europe::Zurich]),
    ("43", &[Europe::Vienna]),
    ("44", &[Europe::London]),
    ("45", &[Europe::Copenhagen]),
    ("46", &[Europe::Stockholm]),
    ("47", &[Europe::Oslo]),
    ("48", &[Europe::Warsaw]),
    ("49", &[Europe::Berlin]),
    ("351", &[Europe::Lisbon, Atlantic::Azores]),
    ("352", &[Europe::Luxembourg]),
    ("353", &[Europe::Dublin]),
    ("354", &[Atlantic::Reykjavik]),
    ("356", &[Europe::Malta]),
    ("357", &[Asia::Nicosia]),
    ("358", &[Europe::Helsinki]),
    ("359", &[Europe::Sofia]),
    ("370", &[Europe::Vilnius]),
    ("371", &[Europe::Riga]),
    ("372", &[Europe::Tallinn]),
    ("380", &[Europe::Kyiv]),
    ("385", &[Europe::Zagreb]),
    ("386", &[Europe::Ljubljana]),
    ("420", &[Europe::Prague]),
    ("421", &[Europe::Bratislava]),
    ("423", &[Europe::Vaduz]),
    ("90", &[Europe::Istanbul]),
    // France's overseas regions, part of the EU with calling codes of their own.
    ("262", &[Indian::Reunion, Indian::Mayotte]),
    ("590", &[America::Guadeloupe]),
    ("594", &[America::Cayenne]),
    ("596", &[America::Martinique]),
    // Russia, one zone per clock from Kaliningrad to Kamchatka; +76 and +77
    // are Kazakhstan.
    (
        "7",
        &[
            Europe::Moscow,
            Europe::Kaliningrad,
            Europe::Samara,
            Asia::Yekaterinburg,
            Asia::Omsk,
            Asia::Novosibirsk,
            Asia::Irkutsk,
            Asia::Yakutsk,
            Asia::Vladivostok,
            Asia::Magadan,
            Asia::Kamchatka,
        ],
    ),
    ("76", &[Asia::Almaty]),
    ("77", &[Asia::Almaty]),
    // Middle East and Africa
    ("972", &[Asia::Jerusalem]),
    ("971", &[Asia::Dubai]),
    ("966", &[Asia::Riyadh]),
    ("20", &[Africa::Cairo]),
    ("27", &[Africa::Johannesburg]),
    ("234", &[Africa::Lagos]),
    ("254", &[Africa::Nairobi]),
    // Asia
    ("91", &[Asia::Kolkata]),
    ("92", &[Asia::Karachi]),
    ("880", &[Asia::Dhaka]),
    ("62", &[Asia::Jakarta, Asia::Makassar, Asia::Jayapura]),
    ("63", &[Asia::Manila]),
    ("84", &[Asia::Ho_Chi_Minh]),
    ("66", &[Asia::Bangkok]),
    ("60", &[Asia::Kuala_Lumpur]),
    ("65", &[Asia::Singapore]),
    ("86", &[Asia::Shanghai]),
    ("852", &[Asia::Hong_Kong]),
    ("886", &[Asia::Taipei]),
    ("81", &[Asia::Tokyo]),
    ("82", &[Asia::Seoul]),
    // Oceania. Australian landlines carry their state in the area code
    // (07 includes Tweed Heads, on New South Wales time); mobiles (04) do not.
    (
        "61",
        &[
            Australia::Sydney,
            Australia::Brisbane,
            Australia::Adelaide,
            Australia::Darwin,
            Australia::Perth,
        ],
    ),
    ("612", &[Australia::Sydney]),
    ("613", &[Australia::Melbourne]),
    ("617", &[Australia::Brisbane, Australia::Sydney]),
    (
        "618",
        &[Australia::Perth, Australia::Adelaide, Australia::Darwin],
    ),
    ("64", &[Pacific::Auckland]),
    // Latin America
    (
        "52",
        &[
            America::Mexico_City,
            America::Cancun,
            America::Mazatlan,
            America::Tijuana,
        ],
    ),
    (
        "55",
        &[America::Sao_Paulo, America::Manaus, America::Rio_Branco],
    ),
    ("54", &[America::Argentina::Buenos_Aires]),
    ("56", &[America::Santiago]),
    ("57", &[America::Bogota]),
    ("51", &[America::Lima]),
];

#[cfg(test)]
#[path = "quiet_tests.rs"]
mod tests;
