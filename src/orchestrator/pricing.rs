//! Price configuration: go-livepeer's `-pricePerGateway` JSON and the
//! per-model prices of an `aiModels.json`, into a [`PriceBook`].

use std::collections::HashMap;

use alloy_primitives::Address;

use super::payments::PriceBook;
use crate::ai::config::{AiModelConfig, Rational};
use crate::pm::recipient::Price;

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("-pricePerGateway: {0}")]
    Gateway(String),
    #[error("aiModels price for {pipeline}/{model}: {msg}")]
    Model {
        pipeline: String,
        model: String,
        msg: String,
    },
}

/// `price_per_unit / pixels_per_unit` as a reduced wei price. Prices in
/// other currencies (go-livepeer's USD, via a price feed) are refused
/// rather than misread as wei.
fn price(ppu: Rational, ppx: Rational, currency: &str) -> Result<Price, String> {
    if !(currency.is_empty() || currency.eq_ignore_ascii_case("wei")) {
        return Err(format!(
            "currency {currency:?} needs a price feed, which lpworker does not follow; give prices in WEI"
        ));
    }
    if ppx.num == 0 {
        return Err("pixels per unit must be positive".into());
    }
    // (a/b) / (c/d) = (a·d) / (b·c)
    let num = ppu.num.checked_mul(ppx.den).ok_or("price too large")?;
    let den = ppu.den.checked_mul(ppx.num).ok_or("price too large")?;
    Price::new(num, den).ok_or_else(|| "pixels per unit must be positive".to_string())
}

/// Parses `-pricePerGateway`: the JSON itself or a file holding it,
/// `{"gateways": [{"ethaddress": "0x…", "priceperunit": N, "pixelsperunit": N, "currency": "WEI"}]}`.
pub fn per_gateway(spec: &str) -> Result<HashMap<Address, Price>, PricingError> {
    let text = if spec.trim_start().starts_with('{') {
        spec.to_string()
    } else {
        std::fs::read_to_string(spec)
            .map_err(|e| PricingError::Gateway(format!("reading {spec}: {e}")))?
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PricingError::Gateway(format!("not JSON: {e}")))?;
    let entries = json
        .get("gateways")
        .and_then(|g| g.as_array())
        .ok_or_else(|| PricingError::Gateway("expected {\"gateways\": [...]}".into()))?;
    let mut out = HashMap::new();
    for e in entries {
        let field = |name: &str| {
            e.get(name)
                .ok_or_else(|| PricingError::Gateway(format!("an entry lacks {name}")))
        };
        let rational = |name: &str| -> Result<Rational, PricingError> {
            let v = field(name)?;
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            Rational::parse(&text).ok_or_else(|| {
                PricingError::Gateway(format!("{name} {text:?} is not a non-negative number"))
            })
        };
        let addr: Address = field("ethaddress")?
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| PricingError::Gateway("ethaddress is not an address".into()))?;
        let currency = e.get("currency").and_then(|c| c.as_str()).unwrap_or("");
        let p = price(
            rational("priceperunit")?,
            rational("pixelsperunit")?,
            currency,
        )
        .map_err(PricingError::Gateway)?;
        out.insert(addr, p);
    }
    Ok(out)
}

/// The per-model prices of an aiModels.json (entries without a price use
/// the base price).
pub fn per_model(models: &[AiModelConfig]) -> Result<HashMap<(u32, String), Price>, PricingError> {
    let mut out = HashMap::new();
    for m in models {
        let Some(ppu) = m.price_per_unit else {
            continue;
        };
        let err = |msg: String| PricingError::Model {
            pipeline: m.pipeline.clone(),
            model: m.model_id.clone(),
            msg,
        };
        let capability = crate::ai::PipelineKind::from_name(&m.pipeline)
            .and_then(|k| k.capability())
            .ok_or_else(|| err(format!("not a go-livepeer pipeline: {:?}", m.pipeline)))?;
        let ppx = m.pixels_per_unit.unwrap_or(Rational { num: 1, den: 1 });
        out.insert(
            (capability, m.model_id.clone()),
            price(ppu, ppx, &m.currency).map_err(err)?,
        );
    }
    Ok(out)
}

/// Both, into a book.
pub fn book(
    per_gateway_spec: Option<&str>,
    models: &[AiModelConfig],
) -> Result<PriceBook, PricingError> {
    Ok(PriceBook {
        per_gateway: per_gateway_spec
            .map(per_gateway)
            .transpose()?
            .unwrap_or_default(),
        per_model: per_model(models)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_overrides_in_go_livepeer_format() {
        let m = per_gateway(
            r#"{"gateways":[{"ethaddress":"0x22d491Bde2303f2f43325b2108D26f1eAbA1e32b","priceperunit":1000,"pixelsperunit":3,"currency":"WEI"},
                            {"ethaddress":"0x0000000000000000000000000000000000000001","priceperunit":"0.5","pixelsperunit":1}]}"#,
        )
        .unwrap();
        let a: Address = "0x22d491Bde2303f2f43325b2108D26f1eAbA1e32b"
            .parse()
            .unwrap();
        assert_eq!(m[&a], Price { num: 1000, den: 3 });
        assert_eq!(m[&Address::with_last_byte(1)], Price { num: 1, den: 2 });
        for bad in [
            r#"{"gateways":[{"ethaddress":"0x01","priceperunit":1,"pixelsperunit":1}]}"#,
            r#"{"gateways":[{"ethaddress":"0x0000000000000000000000000000000000000001","priceperunit":1,"pixelsperunit":0}]}"#,
            r#"{"gateways":[{"ethaddress":"0x0000000000000000000000000000000000000001","priceperunit":1,"pixelsperunit":1,"currency":"USD"}]}"#,
            r#"{"nope":[]}"#,
            "/no/such/file",
        ] {
            assert!(per_gateway(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_prices_from_ai_models() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("aiModels.json");
        std::fs::write(
            &f,
            r#"[{"pipeline":"upscale","model_id":"a","price_per_unit":4768371,"pixels_per_unit":1},
                {"pipeline":"llm","model_id":"b","price_per_unit":"0.5","pixels_per_unit":"1/3"},
                {"pipeline":"upscale","model_id":"free"}]"#,
        )
        .unwrap();
        let models = crate::ai::config::load(f.to_str().unwrap()).unwrap();
        let p = per_model(&models).unwrap();
        let up = crate::ai::PipelineKind::from_name("upscale")
            .unwrap()
            .capability()
            .unwrap();
        let llm = crate::ai::PipelineKind::from_name("llm")
            .unwrap()
            .capability()
            .unwrap();
        assert_eq!(
            p[&(up, "a".to_string())],
            Price {
                num: 4768371,
                den: 1
            }
        );
        // 0.5 per 1/3 unit = 1.5 per unit.
        assert_eq!(p[&(llm, "b".to_string())], Price { num: 3, den: 2 });
        assert!(!p.contains_key(&(up, "free".to_string())));
    }
}
