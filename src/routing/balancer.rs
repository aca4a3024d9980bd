//! Weighted power-of-two-choices over a channel's upstreams.
//!
//! Two candidates are drawn with probability proportional to their weight; the one with the lower
//! load score (latency EWMA x (in-flight + 1) / weight) wins. This prefers fast, idle upstreams
//! without the herd behaviour of always picking the single best one, and needs no global lock.

use crate::config::{Channel, Upstream};
use crate::routing::upstream::Admission;
use rand::Rng;
use std::sync::Arc;

/// Why no upstream could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// No upstream of the channel serves this model.
    NotServed,
    /// Upstreams exist but all are ejected, parked or already tried.
    Exhausted,
}

fn score(u: &Upstream) -> f64 {
    let s = &u.state;
    (s.ewma_us() as f64) * ((s.inflight() + 1) as f64) / (u.weight as f64)
}

/// Pick the next upstream for `model` in `channel`, skipping indexes in `tried`.
/// On success the upstream's admission (normal or half-open probe) has been taken.
pub fn pick(
    channel: &Channel,
    model: &str,
    tried: &[usize],
) -> Result<(usize, Arc<Upstream>, Admission), NoPick> {
    let mut rng = rand::rng();
    let mut served = false;
    // Small fixed-capacity candidate list: channels have a handful of upstreams.
    let mut cands: Vec<usize> = Vec::with_capacity(channel.upstreams.len());
    for (i, u) in channel.upstreams.iter().enumerate() {
        if !u.models.contains(model) || u.disabled.is_some() {
            continue;
        }
        served = true;
        if !tried.contains(&i) && u.state.looks_available() {
            cands.push(i);
        }
    }
    if !served {
        return Err(NoPick::NotServed);
    }
    while !cands.is_empty() {
        let chosen_pos = if cands.len() == 1 {
            0
        } else {
            let a = weighted_draw(channel, &cands, &mut rng);
            let mut b = weighted_draw(channel, &cands, &mut rng);
            if b == a {
                b = (a + 1 + rng.random_range(0..cands.len() - 1)) % cands.len();
            }
            let (ua, ub) = (&channel.upstreams[cands[a]], &channel.upstreams[cands[b]]);
            if score(ua) <= score(ub) {
                a
            } else {
                b
            }
        };
        let idx = cands[chosen_pos];
        let up = &channel.upstreams[idx];
        match up.state.admit() {
            Admission::Refused => {
                cands.swap_remove(chosen_pos);
            }
            adm => return Ok((idx, up.clone(), adm)),
        }
    }
    Err(NoPick::Exhausted)
}

fn weighted_draw(channel: &Channel, cands: &[usize], rng: &mut impl Rng) -> usize {
    let total: u64 = cands
        .iter()
        .map(|&i| channel.upstreams[i].weight as u64)
        .sum();
    let mut x = rng.random_range(0..total.max(1));
    for (pos, &i) in cands.iter().enumerate() {
        let w = channel.upstreams[i].weight as u64;
        if x < w {
            return pos;
        }
        x -= w;
    }
    cands.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::FileConfig;
    use crate::config::Config;
    use crate::routing::upstream::UpstreamStates;
    use std::time::Duration;

    fn config(weights: &[u32]) -> Config {
        let mut text = String::from(
            "[[models]]\nname = \"m\"\n[[models]]\nname = \"other\"\n[[channels]]\nname = \"c\"\n",
        );
        for (i, w) in weights.iter().enumerate() {
            text.push_str(&format!(
                "[[channels.upstreams]]\nname = \"u{i}\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nweight = {w}\nmodels = [\"m\"]\n",
                1000 + i
            ));
        }
        let file: FileConfig = toml::from_str(&text).unwrap();
        Config::build(file, &UpstreamStates::default(), &|_| None).unwrap()
    }

    #[test]
    fn weights_shape_the_distribution() {
        let c = config(&[1, 3]);
        let ch = &c.channels[0];
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            let (i, _, _) = pick(ch, "m", &[]).unwrap();
            counts[i] += 1;
        }
        // Equal latency and no load: P2C picks by weight; u1 must clearly dominate.
        assert!(counts[1] > counts[0] * 2, "{counts:?}");
    }

    #[test]
    fn prefers_the_faster_upstream() {
        let c = config(&[1, 1]);
        let ch = &c.channels[0];
        for _ in 0..20 {
            ch.upstreams[0]
                .state
                .record_success(Duration::from_millis(500));
            ch.upstreams[1]
                .state
                .record_success(Duration::from_millis(5));
        }
        let mut counts = [0u32; 2];
        for _ in 0..1000 {
            let (i, _, _) = pick(ch, "m", &[]).unwrap();
            counts[i] += 1;
        }
        // With two candidates P2C compares both whenever they are drawn distinct.
        assert!(counts[1] > 900, "{counts:?}");
    }

    #[test]
    fn skips_tried_and_ejected_and_reports_why() {
        let c = config(&[1, 1]);
        let ch = &c.channels[0];
        assert_eq!(pick(ch, "other", &[]).unwrap_err(), NoPick::NotServed);
        let (first, _, _) = pick(ch, "m", &[]).unwrap();
        let (second, _, _) = pick(ch, "m", &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(pick(ch, "m", &[0, 1]).unwrap_err(), NoPick::Exhausted);
        ch.upstreams[0].state.record_failure(&ch.breaker, true);
        for _ in 0..50 {
            assert_eq!(pick(ch, "m", &[]).unwrap().0, 1);
        }
    }
}
