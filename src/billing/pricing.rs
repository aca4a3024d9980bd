//! What a call costs, in integer nano-credits.
//!
//! Prices are decimals per 1M tokens in the model's currency. USD-priced models cost
//! `tokens x price / 1e6 x channel.multiplier` (the multiplier carries the exchange ratio and the
//! tier's margin); RMB-priced models cost `tokens x price / 1e6 x credits_per_rmb x
//! channel.rmb_multiplier`. The sum over token kinds is computed exactly in `Decimal` and rounded
//! once per call to the ledger unit, the nano-credit (1e-9 credit), half away from zero. At that
//! resolution a 10-token call on a $0.02/1M model through a 7.2 multiplier costs 1,440
//! nano-credits: never rounded to zero, never inflated to a coarse unit.

use crate::config::{Channel, Currency, Model};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

/// Nano-credits per credit.
pub const NANO: i64 = 1_000_000_000;

/// Tokens of a call by price class. `input` excludes cached and cache-write tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
}

impl TokenCounts {
    /// From OpenAI-style usage, where `prompt_tokens` includes the cached ones.
    pub fn from_usage(u: &crate::protocol::openai::Usage) -> Self {
        let cached = u.cached_tokens.min(u.prompt_tokens);
        let write = u.cache_write_tokens.min(u.prompt_tokens - cached);
        TokenCounts {
            input: u.prompt_tokens - cached - write,
            cached_input: cached,
            cache_write: write,
            output: u.completion_tokens,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("model `{0}` has no price configured; it cannot be billed")]
    Unpriced(String),
    #[error("the cost of this call does not fit the ledger")]
    Overflow,
}

/// Credits one unit of the model's currency is worth on this channel.
fn rate(model_currency: Currency, channel: &Channel, credits_per_rmb: Decimal) -> Decimal {
    match model_currency {
        Currency::Usd => channel.multiplier,
        Currency::Rmb => credits_per_rmb * channel.rmb_multiplier,
    }
}

/// Exact cost in credits (before rounding).
pub fn cost_credits(
    model: &Model,
    channel: &Channel,
    credits_per_rmb: Decimal,
    t: &TokenCounts,
) -> Result<Decimal, PricingError> {
    let p = model
        .price
        .as_ref()
        .ok_or_else(|| PricingError::Unpriced(model.name.clone()))?;
    let million = Decimal::from(1_000_000u32);
    let sum = [
        (t.input, p.input),
        (t.cached_input, p.cached_input),
        (t.cache_write, p.cache_write),
        (t.output, p.output),
    ]
    .iter()
    .try_fold(Decimal::ZERO, |acc, (n, price)| {
        Decimal::from(*n)
            .checked_mul(*price)
            .and_then(|x| acc.checked_add(x))
    })
    .ok_or(PricingError::Overflow)?;
    sum.checked_mul(rate(p.currency, channel, credits_per_rmb))
        .and_then(|x| x.checked_div(million))
        .ok_or(PricingError::Overflow)
}

/// Cost in nano-credits, rounded once (half away from zero).
pub fn cost_nano(
    model: &Model,
    channel: &Channel,
    credits_per_rmb: Decimal,
    t: &TokenCounts,
) -> Result<i64, PricingError> {
    let credits = cost_credits(model, channel, credits_per_rmb, t)?;
    to_nano(credits).ok_or(PricingError::Overflow)
}

/// Credits (decimal) to nano-credits, rounded half away from zero.
pub fn to_nano(credits: Decimal) -> Option<i64> {
    credits
        .checked_mul(Decimal::from(NANO))?
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
}

/// Nano-credits as a decimal number of credits, exact.
pub fn to_credits(nano: i64) -> Decimal {
    Decimal::from(nano) / Decimal::from(NANO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::FileConfig;
    use crate::config::Config;
    use crate::routing::upstream::UpstreamStates;
    use std::str::FromStr;

    fn cfg() -> Config {
        let text = r#"
            [[models]]
            name = "gpt"
            price = { currency = "USD", input = "2.50", cached_input = "1.25", output = "10.00" }
            [[models]]
            name = "emb"
            kind = "embedding"
            price = { currency = "USD", input = "0.02", output = "0" }
            [[models]]
            name = "ds"
            price = { currency = "RMB", input = "2", cached_input = "0.5", output = "8" }
            [[models]]
            name = "free"
            [[channels]]
            name = "official"
            multiplier = "7.2"
            [[channels.upstreams]]
            name = "u"
            base_url = "http://127.0.0.1:1"
            models = ["gpt", "emb", "ds", "free"]
            [[channels]]
            name = "resale"
            multiplier = "5"
            rmb_multiplier = "0.8"
            [[channels.upstreams]]
            name = "u"
            base_url = "http://127.0.0.1:1"
            models = ["gpt", "ds"]
        "#;
        let file: FileConfig = toml::from_str(text).unwrap();
        Config::build(file, &UpstreamStates::default(), &|_| None).unwrap()
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn table() {
        let c = cfg();
        let t = |input, cached_input, output| TokenCounts {
            input,
            cached_input,
            cache_write: 0,
            output,
        };
        // (model, channel, credits per RMB, tokens, expected nano-credits)
        let cases: Vec<(&str, &str, &str, TokenCounts, i64)> = vec![
            // 1000 in x 2.5 + 500 out x 10 = 7500 USD-micro... = 0.0075 USD x 7.2 = 0.054 credits
            ("gpt", "official", "1", t(1000, 0, 500), 54_000_000),
            // cached tokens at the cached price: (800 x 2.5 + 200 x 1.25 + 100 x 10)/1e6 x 7.2
            ("gpt", "official", "1", t(800, 200, 100), 23_400_000),
            // another tier: multiplier 5
            ("gpt", "resale", "1", t(1000, 0, 500), 37_500_000),
            // the cheapest call: 10 tokens of a $0.02/1M model = 1.44e-6 credits
            ("emb", "official", "1", t(10, 0, 0), 1_440),
            // a single token still costs its exact share
            ("emb", "official", "1", t(1, 0, 0), 144),
            // RMB model: official price x credits per RMB (x rmb_multiplier 1)
            ("ds", "official", "1", t(1_000_000, 0, 1_000_000), 10 * NANO),
            ("ds", "official", "100", t(1000, 1000, 1000), 1_050_000_000),
            // RMB model on a channel with rmb_multiplier 0.8
            ("ds", "resale", "1", t(1_000_000, 0, 0), 1_600_000_000),
        ];
        for (model, channel, cpr, tokens, want) in cases {
            let m = c.model(model).unwrap();
            let ch = c.channel(channel).unwrap();
            let got = cost_nano(m, ch, d(cpr), &tokens).unwrap();
            assert_eq!(got, want, "{model} on {channel} x{cpr} {tokens:?}");
        }
    }

    #[test]
    fn unpriced_models_are_refused_and_rounding_is_half_away_from_zero() {
        let c = cfg();
        let err = cost_nano(
            c.model("free").unwrap(),
            c.channel("official").unwrap(),
            Decimal::ONE,
            &TokenCounts::default(),
        );
        assert_eq!(err, Err(PricingError::Unpriced("free".into())));
        assert_eq!(to_nano(d("0.0000000005")), Some(1));
        assert_eq!(to_nano(d("0.0000000004999")), Some(0));
        assert_eq!(to_nano(d("1.5")), Some(1_500_000_000));
        assert_eq!(to_credits(1_440), d("0.00000144"));
    }

    #[test]
    fn usage_split_keeps_cached_tokens_apart() {
        let u = crate::protocol::openai::Usage {
            prompt_tokens: 100,
            cached_tokens: 30,
            completion_tokens: 7,
            reasoning_tokens: 3,
            cache_write_tokens: 0,
        };
        assert_eq!(
            TokenCounts::from_usage(&u),
            TokenCounts {
                input: 70,
                cached_input: 30,
                cache_write: 0,
                output: 7
            }
        );
    }
}
