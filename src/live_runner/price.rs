//! Runner prices: stated in USD by runners (`price_info`), turned into wei
//! with an ETH/USD reading the way go-livepeer does (`ai/runner/live_runner.go`
//! 1734-1817 and `core/autoconvertedprice.go` at 176aa415): per second for
//! `hour`, per pixel of 720p30 for `720p`, once for `fixed`, floored to a
//! whole wei. The arithmetic is exact (integers), as Go's `big.Rat` is.

use alloy_primitives::U256;
use serde::{Deserialize, Serialize};

/// Pixels per second of 720p at 30 fps: what `720p-pixel-seconds` bills.
pub const PIXELS_PER_SECOND_720P: u64 = 1280 * 720 * 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceError {
    #[error("price must be a positive number")]
    NotPositive,
    #[error("price {0:?} is not a decimal number")]
    NotANumber(String),
    #[error("currency {0:?} is not supported; only usd")]
    Currency(String),
    #[error("unit {0:?} is not one of hour, 720p, fixed")]
    Unit(String),
    #[error("the price is less than 1 wei per {0}")]
    BelowOneWei(&'static str),
    #[error("the price in wei does not fit in 64 bits")]
    TooLarge,
}

/// What a runner is paid per, as stated in USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsdUnit {
    #[serde(rename = "hour")]
    Hour,
    #[serde(rename = "720p")]
    Hour720p,
    #[serde(rename = "fixed")]
    Fixed,
}

impl UsdUnit {
    pub fn parse(text: &str) -> Result<UsdUnit, PriceError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "hour" => Ok(UsdUnit::Hour),
            "720p" => Ok(UsdUnit::Hour720p),
            "fixed" => Ok(UsdUnit::Fixed),
            other => Err(PriceError::Unit(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UsdUnit::Hour => "hour",
            UsdUnit::Hour720p => "720p",
            UsdUnit::Fixed => "fixed",
        }
    }

    /// The unit a session is billed in once converted.
    pub fn billing(self) -> BillingUnit {
        match self {
            UsdUnit::Hour => BillingUnit::Seconds,
            UsdUnit::Hour720p => BillingUnit::PixelSeconds720p,
            UsdUnit::Fixed => BillingUnit::Fixed,
        }
    }
}

/// What the orchestrator bills, as advertised in discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BillingUnit {
    #[serde(rename = "seconds")]
    Seconds,
    #[serde(rename = "720p-pixel-seconds")]
    PixelSeconds720p,
    #[serde(rename = "fixed")]
    Fixed,
}

impl BillingUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingUnit::Seconds => "seconds",
            BillingUnit::PixelSeconds720p => "720p-pixel-seconds",
            BillingUnit::Fixed => "fixed",
        }
    }

    /// Units billed per second of a session (none for `fixed`).
    pub fn units_per_second(self) -> u64 {
        match self {
            BillingUnit::Seconds => 1,
            BillingUnit::PixelSeconds720p => PIXELS_PER_SECOND_720P,
            BillingUnit::Fixed => 0,
        }
    }
}

/// A USD amount kept exactly: `num / den`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdPrice {
    num: U256,
    den: U256,
    pub unit: UsdUnit,
}

/// Parses a plain decimal (`10`, `0.25`, `1.5e-3`) exactly into num/den.
fn parse_decimal(text: &str) -> Result<(U256, U256), PriceError> {
    let bad = || PriceError::NotANumber(text.to_string());
    let t = text.trim();
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (t, 0),
    };
    let mantissa = mantissa.strip_prefix('+').unwrap_or(mantissa);
    if mantissa.starts_with('-') {
        return Err(PriceError::NotPositive);
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || int.len() + frac.len() > 40
    {
        return Err(bad());
    }
    let digits: U256 = format!("{int}{frac}").parse().map_err(|_| bad())?;
    let scale = exponent - frac.len() as i32;
    if !(-60..=30).contains(&scale) {
        return Err(bad());
    }
    let ten = U256::from(10u8);
    Ok(if scale >= 0 {
        (digits * ten.pow(U256::from(scale)), U256::from(1u8))
    } else {
        (digits, ten.pow(U256::from(-scale)))
    })
}

impl UsdPrice {
    /// `price` as runners send it (a JSON number or a numeric string),
    /// `currency` (only `usd`; empty means usd) and `unit`.
    pub fn parse(price: &str, currency: &str, unit: &str) -> Result<UsdPrice, PriceError> {
        let currency = currency.trim().to_ascii_lowercase();
        if !currency.is_empty() && currency != "usd" {
            return Err(PriceError::Currency(currency));
        }
        let unit = UsdUnit::parse(unit)?;
        let (num, den) = parse_decimal(price)?;
        if num.is_zero() {
            return Err(PriceError::NotPositive);
        }
        Ok(UsdPrice { num, den, unit })
    }

    /// `num / den` dollars per unit of something the caller counts
    /// (pixels, a model's units): go-livepeer's USD prices of
    /// -pricePerGateway and aiModels.json.
    pub fn fixed(num: U256, den: U256) -> Result<UsdPrice, PriceError> {
        if num.is_zero() || den.is_zero() {
            return Err(PriceError::NotPositive);
        }
        Ok(UsdPrice {
            num,
            den,
            unit: UsdUnit::Fixed,
        })
    }

    /// The price as a decimal string, for storage and display.
    pub fn to_decimal_string(&self) -> String {
        let int = self.num / self.den;
        let mut rem = self.num % self.den;
        if rem.is_zero() {
            return int.to_string();
        }
        let ten = U256::from(10u8);
        let mut frac = String::new();
        while !rem.is_zero() && frac.len() < 60 {
            rem *= ten;
            frac.push(char::from(b'0' + (rem / self.den).to::<u8>()));
            rem %= self.den;
        }
        format!("{int}.{frac}")
    }

    /// Wei per billing unit with ETH at `usd_per_eth` (a feed answer with its
    /// decimals): wei/USD = 1e18 / (answer / 10^decimals), floored.
    pub fn to_wei(&self, eth: &EthUsd) -> Result<WeiPrice, PriceError> {
        let ten = U256::from(10u8);
        let divisor = match self.unit {
            UsdUnit::Hour => U256::from(3600u32),
            UsdUnit::Hour720p => U256::from(3600u64 * PIXELS_PER_SECOND_720P),
            UsdUnit::Fixed => U256::from(1u8),
        };
        let num = self
            .num
            .checked_mul(ten.pow(U256::from(18u8)))
            .and_then(|n| n.checked_mul(ten.pow(U256::from(eth.decimals))))
            .ok_or(PriceError::TooLarge)?;
        let den = self
            .den
            .checked_mul(eth.answer)
            .and_then(|d| d.checked_mul(divisor))
            .ok_or(PriceError::TooLarge)?;
        let wei = num / den;
        let billing = self.unit.billing();
        if wei.is_zero() {
            return Err(PriceError::BelowOneWei(billing.as_str()));
        }
        let wei: i64 = wei.try_into().map_err(|_| PriceError::TooLarge)?;
        Ok(WeiPrice {
            wei: wei as u64,
            unit: billing,
        })
    }
}

/// An ETH/USD reading: `answer / 10^decimals` dollars per ether.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthUsd {
    pub answer: U256,
    pub decimals: u8,
}

/// Where ETH/USD readings come from: the on-chain feed in service, a fixed
/// reading in tests of what is priced from it.
pub trait EthUsdSource: Send + Sync {
    /// A reading fresh enough to price new sessions, or why there is none.
    fn eth_usd(&self) -> Result<EthUsd, String>;
}

impl EthUsdSource for EthUsd {
    fn eth_usd(&self) -> Result<EthUsd, String> {
        Ok(self.clone())
    }
}

/// A converted price: wei per billing unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeiPrice {
    pub wei: u64,
    pub unit: BillingUnit,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(dollars: u64) -> EthUsd {
        // Chainlink's ETH/USD feeds answer with 8 decimals.
        EthUsd {
            answer: U256::from(dollars) * U256::from(100_000_000u64),
            decimals: 8,
        }
    }

    #[test]
    fn go_livepeers_own_figures() {
        // live_runner_test.go: ETH at $2000.
        let hour = UsdPrice::parse("10", "usd", "hour").unwrap();
        assert_eq!(
            hour.to_wei(&eth(2000)).unwrap(),
            WeiPrice {
                wei: 1_388_888_888_888,
                unit: BillingUnit::Seconds
            }
        );
        let p720 = UsdPrice::parse("10", "", "720p").unwrap();
        assert_eq!(
            p720.to_wei(&eth(2000)).unwrap(),
            WeiPrice {
                wei: 50_234,
                unit: BillingUnit::PixelSeconds720p
            }
        );
        let fixed = UsdPrice::parse("0.02", "USD", "fixed").unwrap();
        assert_eq!(fixed.to_wei(&eth(2000)).unwrap().wei, 10_000_000_000_000);
    }

    #[test]
    fn prices_parse_exactly_and_bad_ones_are_refused() {
        assert_eq!(
            UsdPrice::parse("1.5e-3", "usd", "hour")
                .unwrap()
                .to_decimal_string(),
            "0.0015"
        );
        assert_eq!(
            UsdPrice::parse("12", "usd", "hour")
                .unwrap()
                .to_decimal_string(),
            "12"
        );
        assert_eq!(
            UsdPrice::parse("0", "usd", "hour"),
            Err(PriceError::NotPositive)
        );
        assert_eq!(
            UsdPrice::parse("-1", "usd", "hour"),
            Err(PriceError::NotPositive)
        );
        assert!(matches!(
            UsdPrice::parse("ten", "usd", "hour"),
            Err(PriceError::NotANumber(_))
        ));
        assert!(matches!(
            UsdPrice::parse("1", "eur", "hour"),
            Err(PriceError::Currency(_))
        ));
        assert!(matches!(
            UsdPrice::parse("1", "usd", "minute"),
            Err(PriceError::Unit(_))
        ));
        // A price worth less than a wei per unit has no wei price.
        let tiny = UsdPrice::parse("1e-20", "usd", "720p").unwrap();
        assert!(matches!(
            tiny.to_wei(&eth(2000)),
            Err(PriceError::BelowOneWei(_))
        ));
    }
}
