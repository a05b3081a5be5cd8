//! Price configuration: go-livepeer's `-pricePerGateway` JSON and the
//! per-model prices of an `aiModels.json`, in wei or US dollars
//! ([`PriceSpecs`]), into a [`PriceBook`] of wei at an ETH/USD reading.

use std::collections::HashMap;

use alloy_primitives::{Address, U256};

use super::payments::PriceBook;
use crate::ai::config::{AiModelConfig, Rational};
use crate::live_runner::price::{EthUsd, UsdPrice};
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
    #[error("prices in USD: {0}")]
    Usd(String),
}

/// One configured price: wei as given, or US dollars per unit, converted
/// at the ETH/USD feed's reading (and again when it moves).
#[derive(Debug, Clone, PartialEq)]
pub enum Priced {
    Wei(Price),
    Usd {
        per_unit: UsdPrice,
        pixels_per_unit: Rational,
    },
}

impl Priced {
    fn parse(ppu: Rational, ppx: Rational, currency: &str) -> Result<Priced, String> {
        if currency.eq_ignore_ascii_case("usd") {
            if ppx.num == 0 {
                return Err("pixels per unit must be positive".into());
            }
            let per_unit = UsdPrice::fixed(U256::from(ppu.num), U256::from(ppu.den))
                .map_err(|e| e.to_string())?;
            return Ok(Priced::Usd {
                per_unit,
                pixels_per_unit: ppx,
            });
        }
        price(ppu, ppx, currency).map(Priced::Wei)
    }

    /// Wei at `eth` (needed for USD prices only).
    fn to_wei(&self, eth: Option<&EthUsd>) -> Result<Price, String> {
        match self {
            Priced::Wei(p) => Ok(*p),
            Priced::Usd {
                per_unit,
                pixels_per_unit,
            } => {
                let eth = eth.ok_or("no ETH/USD reading to convert them with")?;
                let wei = per_unit.to_wei(eth).map_err(|e| e.to_string())?;
                price(
                    Rational {
                        num: u128::from(wei.wei),
                        den: 1,
                    },
                    *pixels_per_unit,
                    "",
                )
            }
        }
    }
}

/// Per-gateway and per-model prices as configured, before conversion.
#[derive(Debug, Clone, Default)]
pub struct PriceSpecs {
    pub per_gateway: HashMap<Address, Priced>,
    /// (capability, model id) → price per unit.
    pub per_model: HashMap<(u32, String), Priced>,
}

impl PriceSpecs {
    /// Whether any price is in US dollars (so the ETH/USD feed is needed).
    pub fn in_usd(&self) -> bool {
        self.per_gateway
            .values()
            .chain(self.per_model.values())
            .any(|p| matches!(p, Priced::Usd { .. }))
    }

    /// The prices in wei at `eth`.
    pub fn resolve(&self, eth: Option<&EthUsd>) -> Result<PriceBook, PricingError> {
        let mut book = PriceBook::default();
        for (gateway, p) in &self.per_gateway {
            let wei = p
                .to_wei(eth)
                .map_err(|e| PricingError::Usd(format!("gateway {gateway}: {e}")))?;
            book.per_gateway.insert(*gateway, wei);
        }
        for ((capability, model), p) in &self.per_model {
            let wei = p
                .to_wei(eth)
                .map_err(|e| PricingError::Usd(format!("model {model}: {e}")))?;
            book.per_model.insert((*capability, model.clone()), wei);
        }
        Ok(book)
    }
}

/// `price_per_unit / pixels_per_unit` as a reduced wei price. Currencies
/// other than wei and USD are refused rather than misread as wei.
fn price(ppu: Rational, ppx: Rational, currency: &str) -> Result<Price, String> {
    if !(currency.is_empty() || currency.eq_ignore_ascii_case("wei")) {
        return Err(format!(
            "currency {currency:?} is not known: give prices in WEI or USD"
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
/// `{"gateways": [{"ethaddress": "0x…", "priceperunit": N, "pixelsperunit": N, "currency": "WEI"}]}`
/// (`"currency": "USD"` for dollars; go-livepeer's older `"broadcasters"`
/// list is read too).
pub fn per_gateway(spec: &str) -> Result<HashMap<Address, Priced>, PricingError> {
    let text = if spec.trim_start().starts_with('{') {
        spec.to_string()
    } else {
        std::fs::read_to_string(spec)
            .map_err(|e| PricingError::Gateway(format!("reading {spec}: {e}")))?
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PricingError::Gateway(format!("not JSON: {e}")))?;
    let list = |name: &str| json.get(name).and_then(|g| g.as_array());
    if list("gateways").is_none() && list("broadcasters").is_none() {
        return Err(PricingError::Gateway(
            "expected {\"gateways\": [...]}".into(),
        ));
    }
    let entries = list("broadcasters")
        .into_iter()
        .flatten()
        .chain(list("gateways").into_iter().flatten());
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
        let p = Priced::parse(
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
pub fn per_model(models: &[AiModelConfig]) -> Result<HashMap<(u32, String), Priced>, PricingError> {
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
            Priced::parse(ppu, ppx, &m.currency).map_err(err)?,
        );
    }
    Ok(out)
}

/// Both, as configured.
pub fn specs(
    per_gateway_spec: Option<&str>,
    models: &[AiModelConfig],
) -> Result<PriceSpecs, PricingError> {
    Ok(PriceSpecs {
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
        assert_eq!(m[&a], Priced::Wei(Price { num: 1000, den: 3 }));
        assert_eq!(
            m[&Address::with_last_byte(1)],
            Priced::Wei(Price { num: 1, den: 2 })
        );
        for bad in [
            r#"{"gateways":[{"ethaddress":"0x01","priceperunit":1,"pixelsperunit":1}]}"#,
            r#"{"gateways":[{"ethaddress":"0x0000000000000000000000000000000000000001","priceperunit":1,"pixelsperunit":0}]}"#,
            r#"{"gateways":[{"ethaddress":"0x0000000000000000000000000000000000000001","priceperunit":1,"pixelsperunit":1,"currency":"EUR"}]}"#,
            r#"{"gateways":[{"ethaddress":"0x0000000000000000000000000000000000000001","priceperunit":0,"pixelsperunit":1,"currency":"USD"}]}"#,
            r#"{"nope":[]}"#,
            "/no/such/file",
        ] {
            assert!(per_gateway(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usd_prices_follow_the_eth_usd_reading() {
        let gateway = Address::with_last_byte(1);
        let specs = PriceSpecs {
            per_gateway: per_gateway(
                r#"{"broadcasters":[{"ethaddress":"0x0000000000000000000000000000000000000001","priceperunit":"0.000001","pixelsperunit":1,"currency":"USD"}],
                    "gateways":[{"ethaddress":"0x0000000000000000000000000000000000000002","priceperunit":7,"pixelsperunit":1}]}"#,
            )
            .unwrap(),
            ..PriceSpecs::default()
        };
        assert!(specs.in_usd());
        let eth = |dollars: u64| EthUsd {
            answer: U256::from(dollars) * U256::from(100_000_000u64),
            decimals: 8,
        };
        // $0.000001 a pixel: 5e8 wei at $2000, 2.5e8 at $4000.
        let at_2000 = specs.resolve(Some(&eth(2000))).unwrap();
        assert_eq!(
            at_2000.per_gateway[&gateway],
            Price::new(500_000_000, 1).unwrap()
        );
        let at_4000 = specs.resolve(Some(&eth(4000))).unwrap();
        assert_eq!(
            at_4000.per_gateway[&gateway],
            Price::new(250_000_000, 1).unwrap()
        );
        // Wei prices do not move; USD ones cannot be priced without a reading.
        assert_eq!(
            at_4000.per_gateway[&Address::with_last_byte(2)],
            Price::new(7, 1).unwrap()
        );
        assert!(specs.resolve(None).is_err());
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
            Priced::Wei(Price {
                num: 4768371,
                den: 1
            })
        );
        // 0.5 per 1/3 unit = 1.5 per unit.
        assert_eq!(
            p[&(llm, "b".to_string())],
            Priced::Wei(Price { num: 3, den: 2 })
        );
        assert!(!p.contains_key(&(up, "free".to_string())));
    }
}
