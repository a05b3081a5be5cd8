//! go-livepeer's `aiModels.json`: which pipelines and models a node serves.

use std::path::Path;

use serde::Deserialize;

/// One entry of `aiModels.json` (go-livepeer's `AIModelConfig`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AiModelConfig {
    pub pipeline: String,
    pub model_id: String,
    /// External runner URL; lpworker runs models itself, so an entry with a
    /// URL is refused rather than silently ignored.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub warm: bool,
    /// Requests served at once for this model (default 1).
    #[serde(default)]
    pub capacity: u32,
    #[serde(default)]
    pub optimization_flags: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub gateway: String,
    /// Wei per unit (a rational: a JSON number, or a string like "1/3").
    #[serde(default)]
    pub price_per_unit: Option<Rational>,
    #[serde(default)]
    pub pixels_per_unit: Option<Rational>,
    #[serde(default)]
    pub currency: String,
}

/// A non-negative rational given as a JSON number or string ("12", "0.5", "1/3").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rational {
    pub num: u128,
    pub den: u128,
}

impl<'de> Deserialize<'de> for Rational {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let text = match &v {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            _ => return Err(serde::de::Error::custom("expected a number or a string")),
        };
        Rational::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("not a non-negative rational: {text:?}"))
        })
    }
}

impl Rational {
    pub fn parse(text: &str) -> Option<Rational> {
        let text = text.trim();
        if let Some((n, d)) = text.split_once('/') {
            let (num, den) = (n.trim().parse().ok()?, d.trim().parse::<u128>().ok()?);
            return (den > 0).then_some(Rational { num, den });
        }
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        if frac.len() > 18 || !frac.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let den = 10u128.checked_pow(frac.len() as u32)?;
        let num = int
            .parse::<u128>()
            .ok()?
            .checked_mul(den)?
            .checked_add(if frac.is_empty() {
                0
            } else {
                frac.parse().ok()?
            })?;
        Some(Rational { num, den })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid aiModels.json: {msg}")]
    Invalid { path: String, msg: String },
}

/// Reads `aiModels.json`, or go-livepeer's inline form `pipeline:model_id:warm,...`.
pub fn load(spec: &str) -> Result<Vec<AiModelConfig>, ConfigError> {
    let path = Path::new(spec);
    let invalid = |msg: String| ConfigError::Invalid {
        path: spec.to_string(),
        msg,
    };
    let entries: Vec<AiModelConfig> = if path.is_file() || spec.ends_with(".json") {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: spec.to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?
    } else {
        spec.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|item| {
                let parts: Vec<_> = item.trim().split(':').collect();
                match parts.as_slice() {
                    [pipeline, model] | [pipeline, model, _] => Ok(AiModelConfig {
                        pipeline: pipeline.to_string(),
                        model_id: model.to_string(),
                        warm: parts.get(2).is_some_and(|w| *w == "true"),
                        url: String::new(),
                        token: String::new(),
                        capacity: 0,
                        optimization_flags: Default::default(),
                        gateway: String::new(),
                        price_per_unit: None,
                        pixels_per_unit: None,
                        currency: String::new(),
                    }),
                    _ => Err(invalid(format!("{item:?} is not pipeline:model_id[:warm]"))),
                }
            })
            .collect::<Result<_, _>>()?
    };
    if entries.is_empty() {
        return Err(invalid("no models listed".into()));
    }
    for e in &entries {
        if e.pipeline.is_empty() || e.model_id.is_empty() {
            return Err(invalid(
                "every entry needs a pipeline and a model_id".into(),
            ));
        }
        if !e.url.is_empty() {
            return Err(invalid(format!(
                "{}/{}: external runner URLs are go-livepeer's; lpworker runs models in process (remove \"url\")",
                e.pipeline, e.model_id
            )));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_livepeer_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aiModels.json");
        std::fs::write(
            &path,
            r#"[{"pipeline":"upscale","model_id":"lpworker/nearest-2x","warm":true,"capacity":2,
                 "price_per_unit":4768371,"pixels_per_unit":1,"currency":"WEI"},
                {"pipeline":"llm","model_id":"m","price_per_unit":"0.5","pixels_per_unit":"1/3",
                 "optimization_flags":{"SFAST":true}}]"#,
        )
        .unwrap();
        let c = load(path.to_str().unwrap()).unwrap();
        assert_eq!(c[0].capacity, 2);
        assert!(c[0].warm);
        assert_eq!(
            c[0].price_per_unit,
            Some(Rational {
                num: 4768371,
                den: 1
            })
        );
        assert_eq!(c[1].price_per_unit, Some(Rational { num: 5, den: 10 }));
        assert_eq!(c[1].pixels_per_unit, Some(Rational { num: 1, den: 3 }));
        assert_eq!(c[1].optimization_flags["SFAST"], true);
    }

    #[test]
    fn inline_form_and_errors() {
        let c = load("upscale:a/b:true,llm:c").unwrap();
        assert_eq!(
            (c[0].warm, c[1].warm, c[1].model_id.as_str()),
            (true, false, "c")
        );
        assert!(load("upscale").is_err());
        assert!(load("").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"[{"pipeline":"upscale","model_id":"x","url":"http://runner:8000"}]"#,
        )
        .unwrap();
        assert!(load(path.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("url"));
        std::fs::write(
            &path,
            r#"[{"pipeline":"upscale","model_id":"x","price_per_unit":"-1"}]"#,
        )
        .unwrap();
        assert!(load(path.to_str().unwrap()).is_err());
    }
}
