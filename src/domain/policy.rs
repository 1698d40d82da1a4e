//! Per-message policies: how a message trades a possible duplicate against a
//! possible miss, how long it waits for proof, and when its SMS may land.
//!
//! A message's policy is resolved once, at intake, from the most specific
//! level that says each setting:
//!
//! 1. the message itself (`policy` in the request);
//! 2. its agent's setting for its `messageTrafficType`, then the
//!    deployment's setting for that traffic type;
//! 3. its agent's general setting, then the deployment's.
//!
//! The traffic type comes first because both trade-offs are about urgency:
//! an agent that sets quiet hours for all its traffic must not thereby hold
//! back one-time codes at night. The deployment's per-type defaults ship as:
//! AUTHENTICATION sends the SMS when uncertain, as Google advises for
//! one-time codes, and never keeps quiet; PROMOTION skips it and keeps quiet
//! at night.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::machine::OnUncertain;
use super::quiet::QuietHours;

/// The longest confirm window a policy may ask for.
pub const MAX_CONFIRM_WINDOW: Duration = Duration::from_secs(3600);

/// RBM's `messageTrafficType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficType {
    Authentication,
    Transaction,
    Promotion,
    ServiceRequest,
    Acknowledgement,
}

impl TrafficType {
    pub const ALL: &'static [TrafficType] = &[
        TrafficType::Authentication,
        TrafficType::Transaction,
        TrafficType::Promotion,
        TrafficType::ServiceRequest,
        TrafficType::Acknowledgement,
    ];

    /// The RBM API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Authentication => "AUTHENTICATION",
            TrafficType::Transaction => "TRANSACTION",
            TrafficType::Promotion => "PROMOTION",
            TrafficType::ServiceRequest => "SERVICEREQUEST",
            TrafficType::Acknowledgement => "ACKNOWLEDGEMENT",
        }
    }

    pub fn parse(s: &str) -> Option<TrafficType> {
        TrafficType::ALL.iter().copied().find(|t| t.as_str() == s)
    }

    pub fn names() -> String {
        let all: Vec<&str> = TrafficType::ALL.iter().map(|t| t.as_str()).collect();
        all.join(", ")
    }
}

impl<'de> Deserialize<'de> for TrafficType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrafficType::parse(&s).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown messageTrafficType {s:?}; one of {}",
                TrafficType::names()
            ))
        })
    }
}

impl Serialize for TrafficType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OnUncertain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OnUncertain::parse(&s).ok_or_else(|| {
            de::Error::custom(format!("unknown on_uncertain {s:?}; one of skip, send_sms"))
        })
    }
}

impl Serialize for OnUncertain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Quiet hours as one level states them: a rule, or `"off"` to lift a rule
/// a less specific level would impose.
#[derive(Clone, Debug, PartialEq)]
pub enum QuietSetting {
    Off,
    Rule(QuietHours),
}

impl<'de> Deserialize<'de> for QuietSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QuietSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""off" or {"start": "21:00", "end": "08:00", "time_zone": "auto", "action": "wait"}"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<QuietSetting, E> {
                match s {
                    "off" => Ok(QuietSetting::Off),
                    _ => Err(E::custom(format!(
                        "quiet_hours must be \"off\" or an object, not {s:?}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<QuietSetting, A::Error> {
                QuietHours::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(QuietSetting::Rule)
            }
        }
        d.deserialize_any(V)
    }
}

/// What one level says; `None`: nothing, ask the next level.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverrides {
    #[serde(default)]
    pub on_uncertain: Option<OnUncertain>,
    #[serde(default)]
    pub confirm_window_ms: Option<u64>,
    #[serde(default)]
    pub quiet_hours: Option<QuietSetting>,
}

impl PolicyOverrides {
    /// The first problem, as (field, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.confirm_window_ms {
            Some(ms) if ms > MAX_CONFIRM_WINDOW.as_millis() as u64 => Err((
                "confirm_window_ms",
                format!(
                    "must be at most {} (one hour), got {ms}",
                    MAX_CONFIRM_WINDOW.as_millis()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// One level's defaults: for every message, and per traffic type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyDefaults {
    pub all: PolicyOverrides,
    pub traffic: HashMap<TrafficType, PolicyOverrides>,
}

/// The policy a message lives by.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub on_uncertain: OnUncertain,
    pub confirm_window: Duration,
    pub quiet_hours: Option<QuietHours>,
}

/// Resolves a message's policy; `confirm_window` is the deployment's
/// `fallback.confirm_window_ms`, the last word when no level says one.
pub fn resolve(
    message: &PolicyOverrides,
    agent: &PolicyDefaults,
    deployment: &PolicyDefaults,
    traffic: Option<TrafficType>,
    confirm_window: Duration,
) -> Resolved {
    let none = PolicyOverrides::default();
    let per_type = |level: &PolicyDefaults| -> PolicyOverrides {
        traffic
            .and_then(|t| level.traffic.get(&t))
            .cloned()
            .unwrap_or_else(|| none.clone())
    };
    let (agent_type, deployment_type) = (per_type(agent), per_type(deployment));
    let levels = [
        message,
        &agent_type,
        &deployment_type,
        &agent.all,
        &deployment.all,
    ];
    Resolved {
        on_uncertain: levels
            .iter()
            .find_map(|l| l.on_uncertain)
            .unwrap_or(OnUncertain::Skip),
        confirm_window: levels
            .iter()
            .find_map(|l| l.confirm_window_ms)
            .map_or(confirm_window, Duration::from_millis),
        quiet_hours: match levels.iter().find_map(|l| l.quiet_hours.as_ref()) {
            Some(QuietSetting::Rule(rule)) => Some(rule.clone()),
            Some(QuietSetting::Off) | None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(start: &str) -> QuietHours {
        serde_json::from_value(serde_json::json!({ "start": start, "end": "08:00" })).unwrap()
    }

    fn says(on_uncertain: Option<OnUncertain>, quiet: Option<QuietSetting>) -> PolicyOverrides {
        PolicyOverrides {
            on_uncertain,
            confirm_window_ms: None,
            quiet_hours: quiet,
        }
    }

    fn shipped() -> PolicyDefaults {
        PolicyDefaults {
            all: PolicyOverrides::default(),
            traffic: HashMap::from([
                (
                    TrafficType::Authentication,
                    says(Some(OnUncertain::SendSms), Some(QuietSetting::Off)),
                ),
                (
                    TrafficType::Promotion,
                    says(
                        Some(OnUncertain::Skip),
                        Some(QuietSetting::Rule(rule("21:00"))),
                    ),
                ),
            ]),
        }
    }

    const WINDOW: Duration = Duration::from_secs(5);

    #[test]
    fn the_most_specific_level_wins_each_setting_on_its_own() {
        let none = PolicyOverrides::default();
        let no_agent = PolicyDefaults::default();
        let otp = resolve(
            &none,
            &no_agent,
            &shipped(),
            Some(TrafficType::Authentication),
            WINDOW,
        );
        assert_eq!(otp.on_uncertain, OnUncertain::SendSms);
        assert_eq!(otp.quiet_hours, None);
        assert_eq!(otp.confirm_window, WINDOW);

        let promo = resolve(
            &none,
            &no_agent,
            &shipped(),
            Some(TrafficType::Promotion),
            WINDOW,
        );
        assert_eq!(promo.on_uncertain, OnUncertain::Skip);
        assert_eq!(promo.quiet_hours, Some(rule("21:00")));

        // An agent's general settings do not reach the traffic types the
        // deployment says something about: its quiet hours do not hold back
        // one-time codes...
        let agent = PolicyDefaults {
            all: says(
                Some(OnUncertain::SendSms),
                Some(QuietSetting::Rule(rule("22:00"))),
            ),
            traffic: HashMap::from([(TrafficType::Promotion, says(None, Some(QuietSetting::Off)))]),
        };
        let r = resolve(
            &none,
            &agent,
            &shipped(),
            Some(TrafficType::Authentication),
            WINDOW,
        );
        assert_eq!(
            (r.on_uncertain, r.quiet_hours),
            (OnUncertain::SendSms, None)
        );
        // ...but do reach the others.
        let r = resolve(
            &none,
            &agent,
            &shipped(),
            Some(TrafficType::Transaction),
            WINDOW,
        );
        assert_eq!(r.on_uncertain, OnUncertain::SendSms);
        assert_eq!(r.quiet_hours, Some(rule("22:00")));
        // The agent's per-type word beats the deployment's.
        let r = resolve(
            &none,
            &agent,
            &shipped(),
            Some(TrafficType::Promotion),
            WINDOW,
        );
        assert_eq!(r.quiet_hours, None, "the agent lifted the quiet hours");
        assert_eq!(r.on_uncertain, OnUncertain::Skip);

        // ...and the message beats everything, one setting at a time.
        let message = PolicyOverrides {
            confirm_window_ms: Some(1200),
            ..says(Some(OnUncertain::SendSms), None)
        };
        let r = resolve(
            &message,
            &no_agent,
            &shipped(),
            Some(TrafficType::Promotion),
            WINDOW,
        );
        assert_eq!(r.on_uncertain, OnUncertain::SendSms);
        assert_eq!(r.confirm_window, Duration::from_millis(1200));
        assert_eq!(r.quiet_hours, Some(rule("21:00")));
    }

    #[test]
    fn without_a_traffic_type_only_the_general_levels_apply() {
        let r = resolve(
            &PolicyOverrides::default(),
            &PolicyDefaults::default(),
            &shipped(),
            None,
            WINDOW,
        );
        assert_eq!(r.on_uncertain, OnUncertain::Skip);
        assert_eq!(r.quiet_hours, None);
    }

    #[test]
    fn overrides_parse_with_clear_errors() {
        let p: PolicyOverrides = serde_json::from_value(serde_json::json!({
            "on_uncertain": "send_sms",
            "confirm_window_ms": 2000,
            "quiet_hours": "off"
        }))
        .unwrap();
        assert_eq!(p.on_uncertain, Some(OnUncertain::SendSms));
        assert_eq!(p.quiet_hours, Some(QuietSetting::Off));
        let p: PolicyOverrides = serde_json::from_value(serde_json::json!({
            "quiet_hours": { "start": "22:00", "end": "07:30", "action": "drop" }
        }))
        .unwrap();
        assert!(matches!(p.quiet_hours, Some(QuietSetting::Rule(_))));

        let err = |v: serde_json::Value| {
            serde_json::from_value::<PolicyOverrides>(v)
                .unwrap_err()
                .to_string()
        };
        assert!(err(serde_json::json!({ "on_uncertain": "maybe" })).contains("skip, send_sms"));
        assert!(err(serde_json::json!({ "quiet_hours": "on" })).contains("\"off\""));
        assert!(err(serde_json::json!({ "colour": 1 })).contains("unknown field"));
        let long = PolicyOverrides {
            confirm_window_ms: Some(3_600_001),
            ..Default::default()
        };
        assert_eq!(long.check().unwrap_err().0, "confirm_window_ms");
        assert!(
            serde_json::from_value::<TrafficType>(serde_json::json!("SPAM"))
                .unwrap_err()
                .to_string()
                .contains("AUTHENTICATION")
        );
    }
}
