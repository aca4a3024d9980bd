//! `tollgate router score` (audit and evaluation) and `tollgate router bench` (hidden): both
//! read OpenAI chat request bodies as JSON lines and go through [`decide`], the gateway's path.

use super::{
    decide, parse_auto_model, Mode, RouteInput, RoutePolicy, RouterModel, StickyMap, Tier,
};
use crate::config::Config;
use crate::routing::upstream::UpstreamStates;
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The model and policy the commands use: the configuration's `[router]` section when a
/// configuration is given, else the model file with two placeholder tiers `light` / `strong`.
pub fn load(
    config: Option<&Path>,
    model: Option<&Path>,
    mode: Option<&str>,
) -> Result<(Arc<RouterModel>, RoutePolicy), String> {
    let (mut rmodel, mut policy) = match config {
        Some(path) => {
            let cfg = Config::load(path, &UpstreamStates::default()).map_err(|e| e.to_string())?;
            let r = cfg
                .router
                .as_ref()
                .ok_or_else(|| format!("{} has no [router] section", path.display()))?;
            (r.model.clone(), RoutePolicy::clone(&r.policy))
        }
        None => {
            let path = model.unwrap_or(Path::new("conf/router/complexity-v2.json"));
            let m = RouterModel::load(path).map_err(|e| e.to_string())?;
            let tier = |name: &str| {
                Arc::new(Tier {
                    name: name.into(),
                    model: name.into(),
                    channel: None,
                    context_tokens: None,
                })
            };
            let policy = RoutePolicy {
                tiers: vec![tier("light"), tier("strong")],
                default_mode: Mode::Balanced,
                fallback_tier: 1,
                allow_hints: false,
                max_light_tools: 8,
            };
            (Arc::new(m), policy)
        }
    };
    if let (Some(path), Some(_)) = (model, config) {
        rmodel = Arc::new(RouterModel::load(path).map_err(|e| e.to_string())?);
    }
    if let Some(m) = mode {
        policy.default_mode = Mode::parse(m)
            .ok_or_else(|| format!("unknown mode `{m}` (cheap, balanced, quality)"))?;
    }
    Ok((rmodel, policy))
}

/// One output line for one input line.
pub fn score_line(
    line: &str,
    model: &RouterModel,
    policy: &RoutePolicy,
    sticky: Option<&StickyMap>,
) -> Value {
    let body: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"id": null, "error": format!("not JSON: {e}")}),
    };
    let id = body.get("id").cloned().unwrap_or(Value::Null);
    if !body.is_object() {
        return json!({"id": id, "error": "a line must be a JSON object (a chat request body)"});
    }
    if !matches!(body.get("messages"), Some(Value::Array(_))) {
        return json!({"id": id, "error": "`messages` must be an array"});
    }
    // `auto:<mode>` in the body's model overrides the default mode, as in the gateway.
    let mode = body
        .get("model")
        .and_then(Value::as_str)
        .and_then(parse_auto_model)
        .flatten();
    let d = decide(
        Some(model),
        policy,
        &RouteInput {
            body: &body,
            hint_header: None,
            mode,
            scope: "",
        },
        sticky,
    );
    json!({
        "id": id,
        "score": d.score,
        "tier": d.tier.name,
        "model": d.tier.model,
        "reason": d.reason.as_str(),
    })
}

pub fn run_score(model: &RouterModel, policy: &RoutePolicy) -> i32 {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in stdin.lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: reading stdin: {e}");
                return 1;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let v = score_line(&line, model, policy, None);
        if writeln!(out, "{v}").is_err() {
            return 1;
        }
    }
    if out.flush().is_err() {
        return 1;
    }
    0
}

/// Scores every request of stdin (plus `huge` synthetic prompts of 1 MB to 8 MB) `rounds`
/// times through `decide` and prints the distribution of the time per request.
pub fn run_bench(model: &RouterModel, policy: &RoutePolicy, rounds: usize, huge: usize) -> i32 {
    let mut bodies: Vec<Value> = Vec::new();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            bodies.push(v);
        }
    }
    let n_real = bodies.len();
    for i in 0..huge {
        let size = (1usize << 20) << (i % 4);
        let unit = "Explain step by step why x^2 + 3 = 7 has two roots; ünïcödé 数学. ";
        let text: String = unit.repeat(size / unit.len());
        bodies.push(json!({"model": "auto", "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": text}]}));
    }
    if bodies.is_empty() {
        eprintln!("error: no requests on stdin");
        return 1;
    }
    let sticky = StickyMap::new(100_000, Duration::from_secs(3600));
    let mut times: Vec<u64> = Vec::with_capacity(bodies.len() * rounds.max(1));
    let mut huge_times: Vec<u64> = Vec::new();
    let mut strong = 0usize;
    for round in 0..rounds.max(1) + 1 {
        for (i, b) in bodies.iter().enumerate() {
            let input = RouteInput {
                body: b,
                hint_header: None,
                mode: None,
                scope: "bench",
            };
            let t = Instant::now();
            let d = decide(Some(model), policy, &input, Some(&sticky));
            let ns = t.elapsed().as_nanos() as u64;
            if round == 0 {
                continue; // warm-up round
            }
            strong += usize::from(d.tier_index > 0);
            times.push(ns);
            if i >= n_real {
                huge_times.push(ns);
            }
        }
    }
    let pct = |v: &mut Vec<u64>, p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    let total = times.len();
    let (p50, p99, max) = (
        pct(&mut times, 0.5),
        pct(&mut times, 0.99),
        pct(&mut times, 1.0),
    );
    let (h50, hmax) = (pct(&mut huge_times, 0.5), pct(&mut huge_times, 1.0));
    println!(
        "router bench: {total} decisions ({n_real} requests + {huge} huge, x{} rounds): \
         p50 {p50:.1} us, p99 {p99:.1} us, max {max:.1} us; huge prompts p50 {h50:.1} us, \
         max {hmax:.1} us; strong share {:.1}%",
        rounds.max(1),
        strong as f64 * 100.0 / total.max(1) as f64
    );
    0
}
