//! The trace sampler, from `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, read and
//! checked here and given to both tracer providers (the SDK's and `unexported`'s). The SDK
//! reads them itself otherwise, and on a value it does not know (a typo, `jaeger_remote`, a
//! ratio written `10%`) it falls back to sampling everything without a word (its warnings
//! are compiled out): with no endpoint on the server, that sampled flag would reach every task
//! and make an exporting worker downstream export every trace (found by an outside attack).

use opentelemetry_sdk::trace::Sampler;

use crate::InitError;

/// The sampler's name.
pub(crate) const SAMPLER_VAR: &str = "OTEL_TRACES_SAMPLER";
/// The ratio of the `*traceidratio` samplers.
pub(crate) const ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";

/// The sampler the environment asks for, or an error naming the variable.
pub(crate) fn from_env() -> Result<Sampler, InitError> {
    parse(read(SAMPLER_VAR)?.as_deref(), read(ARG_VAR)?.as_deref())
}

/// `var`'s value; none when unset or blank (the spec treats an empty value as unset).
fn read(variable: &'static str) -> Result<Option<String>, InitError> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Ok(Some(value)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(InitError::Setting {
            variable,
            message: "is not valid UTF-8".into(),
        }),
    }
}

/// The sampler named `name` (case-insensitive, as the configuration spec's enumerations are;
/// `parentbased_always_on` when none), its ratio from `arg` (1 when none, as the spec says;
/// ignored by the samplers without one).
fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, InitError> {
    let ratio = || match arg.map(str::trim) {
        None => Ok(1.0),
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|ratio| (0.0..=1.0).contains(ratio))
            .ok_or_else(|| InitError::Setting {
                variable: ARG_VAR,
                message: "must be a number from 0 to 1, such as 0.1".into(),
            }),
    };
    let name = name.map(|name| name.trim().to_ascii_lowercase());
    Ok(match name.as_deref().unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        _ => {
            return Err(InitError::Setting {
                variable: SAMPLER_VAR,
                message: "must be always_on, always_off, traceidratio, parentbased_always_on, \
                          parentbased_always_off or parentbased_traceidratio (no other sampler \
                          is built in)"
                    .into(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: Option<&str>, arg: Option<&str>) -> String {
        match parse(name, arg) {
            Ok(sampler) => format!("{sampler:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn the_specs_samplers_are_read_and_anything_else_is_refused_by_name() {
        let parent_on = "ParentBased(AlwaysOn)";
        assert_eq!(named(None, None), parent_on);
        assert_eq!(named(Some("parentbased_always_on"), None), parent_on);
        assert_eq!(named(Some(" ParentBased_Always_On "), None), parent_on);
        assert_eq!(named(Some("always_on"), Some("junk")), "AlwaysOn");
        assert_eq!(named(Some("always_off"), None), "AlwaysOff");
        assert_eq!(
            named(Some("parentbased_always_off"), None),
            "ParentBased(AlwaysOff)"
        );
        assert_eq!(
            named(Some("traceidratio"), Some("0.1")),
            "TraceIdRatioBased(0.1)"
        );
        assert_eq!(named(Some("traceidratio"), None), "TraceIdRatioBased(1.0)");
        assert_eq!(
            named(Some("parentbased_traceidratio"), Some(" 0 ")),
            "ParentBased(TraceIdRatioBased(0.0))"
        );
        for (name, arg, variable) in [
            ("garbage_xyz", None, SAMPLER_VAR),
            ("parentbased_always_of", None, SAMPLER_VAR),
            ("jaeger_remote", None, SAMPLER_VAR),
            ("xray", None, SAMPLER_VAR),
            ("always_on\u{202e}", None, SAMPLER_VAR),
            ("traceidratio", Some("10%"), ARG_VAR),
            ("traceidratio", Some("1.5"), ARG_VAR),
            ("parentbased_traceidratio", Some("-0.1"), ARG_VAR),
            ("parentbased_traceidratio", Some("NaN"), ARG_VAR),
            ("traceidratio", Some("inf"), ARG_VAR),
        ] {
            let refused = named(Some(name), arg);
            assert!(
                refused.starts_with(&format!("invalid {variable}: must be")),
                "{name} {arg:?}: {refused}"
            );
        }
    }
}
