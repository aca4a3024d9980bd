use super::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn model() -> RouterModel {
    RouterModel::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/router/complexity-v2.json"
    )))
    .unwrap()
}

fn tier(name: &str, ctx: Option<u64>) -> Arc<Tier> {
    Arc::new(Tier {
        name: name.into(),
        model: format!("{name}-model"),
        channel: None,
        context_tokens: ctx,
    })
}

fn policy() -> RoutePolicy {
    RoutePolicy {
        tiers: vec![tier("light", Some(1000)), tier("strong", Some(100_000))],
        default_mode: Mode::Balanced,
        fallback_tier: 1,
        allow_hints: true,
        max_light_tools: 2,
    }
}

fn user(text: &str) -> Value {
    json!({"model": "auto", "messages": [{"role": "user", "content": text}]})
}

fn run(body: &Value, hint: Option<&str>, mode: Option<Mode>) -> Decision {
    decide(
        Some(&model()),
        &policy(),
        &RouteInput {
            body,
            hint_header: hint,
            mode,
            scope: "t",
        },
        None,
    )
}

/// Python (scripts/router/features.py) and Rust agree on every golden request. Regenerate the
/// file with scripts/router/train.py after any change to the features or the model.
#[test]
fn golden_scores_match_the_training_side() {
    let m = model();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/router/golden.jsonl"
    ))
    .unwrap();
    let mut n = 0;
    let mut worst = 0.0f64;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let want = v["score"].as_f64().unwrap();
        let got = score_f64(&m, &v["request"]);
        let diff = (got - want).abs();
        worst = worst.max(diff);
        assert!(
            diff < 1e-5,
            "{}: rust {got} python {want} (diff {diff})",
            v["id"]
        );
        n += 1;
    }
    assert!(n >= 50, "golden file has only {n} cases");
    eprintln!("golden: {n} cases, worst difference {worst:e}");
}

/// The golden test can fail: a perturbed text changes the score beyond the tolerance.
#[test]
fn the_golden_tolerance_detects_a_one_token_change() {
    let m = model();
    let a = score_f64(
        &m,
        &user("Prove that the square root of two is irrational."),
    );
    let b = score_f64(
        &m,
        &user("Prove that the square root of two is irrational!"),
    );
    assert!((a - b).abs() > 1e-5, "{a} {b}");
}

#[test]
fn scores_are_bounded_and_deterministic_on_odd_inputs() {
    let m = model();
    for body in [
        json!(null),
        json!([1, 2]),
        json!({"messages": "x"}),
        json!({"messages": [null, 3, {"role": 5}, {"role": "user", "content": {"a": 1}}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "text"}, {"type": "text", "text": 7}]}]}),
        user(&"\u{10FFFF}".repeat(10_000)),
        user(&"a".repeat(3_000_000)),
    ] {
        let s = score(&m, &body);
        assert!((0.0..=1.0).contains(&s), "{body}: {s}");
        assert_eq!(s, score(&m, &body));
    }
}

#[test]
fn easy_chat_scores_below_hard_reasoning() {
    let m = model();
    let easy = score(&m, &user("Translate 'good night' into Italian."));
    let hard = score(
        &m,
        &user("Prove that every finite integral domain is a field, then derive the consequence for Z/pZ step by step."),
    );
    assert!(easy < hard, "easy {easy} hard {hard}");
}

#[test]
fn rules_set_a_minimum_tier_and_name_themselves() {
    let img = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]});
    let tools = json!({"messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function"}, {"type": "function"}, {"type": "function"}]});
    let forced = json!({"messages": [{"role": "user", "content": "hi"}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}});
    let required =
        json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"});
    let schema = json!({"messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {}}});
    let long = user(&"hello ".repeat(1000)); // ~1500 tokens > the light tier's 1000
    let out = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000});
    let table: [(&Value, Option<&str>, &str); 8] = [
        (&img, None, "images"),
        (&tools, None, "tools"),
        (&forced, None, "tool_choice"),
        (&required, None, "tool_choice"),
        (&schema, None, "json_schema"),
        (&long, None, "context"),
        (&out, None, "context"),
        (&user("hi"), Some("strong"), "hint"),
    ];
    for (body, hint, want) in table {
        let d = run(body, hint, None);
        assert_eq!(d.tier.name, "strong", "{want}");
        assert_eq!(d.reason.as_str(), want);
        assert!(d.score.is_some());
    }
    // An easy request without rules stays light, reason from the score.
    let d = run(&user("hi"), None, None);
    assert_eq!(
        (d.tier.name.as_str(), d.reason.as_str()),
        ("light", "score<threshold(balanced)")
    );
    // Hints are ignored when the policy does not allow them, and unknown tiers are ignored.
    let mut p = policy();
    p.allow_hints = false;
    let body = user("hi");
    let input = RouteInput {
        body: &body,
        hint_header: Some("strong"),
        mode: None,
        scope: "t",
    };
    assert_eq!(decide(Some(&model()), &p, &input, None).tier.name, "light");
    assert_eq!(run(&user("hi"), Some("platinum"), None).tier.name, "light");
    // The body field works like the header.
    let mut b = user("hi");
    b["tollgate_tier"] = json!("strong");
    assert_eq!(run(&b, None, None).reason, Reason::Hint);
}

#[test]
fn a_context_rule_picks_the_first_tier_that_fits() {
    let p = RoutePolicy {
        tiers: vec![
            tier("light", Some(1000)),
            tier("long", Some(50_000)),
            tier("strong", Some(8_000)),
        ],
        default_mode: Mode::Cheap,
        fallback_tier: 2,
        allow_hints: false,
        max_light_tools: 2,
    };
    let body = user(&"hello ".repeat(2000)); // ~3000 tokens
    let d = decide(
        Some(&model()),
        &p,
        &RouteInput {
            body: &body,
            hint_header: None,
            mode: Some(Mode::Cheap),
            scope: "t",
        },
        None,
    );
    // Either the score escalates to the top, or the context rule gives the middle tier.
    if d.reason == Reason::Context {
        assert_eq!(d.tier.name, "long");
    } else {
        assert_eq!(d.reason, Reason::ScoreAbove(Mode::Cheap));
    }
}

#[test]
fn modes_move_the_threshold() {
    let m = model();
    let body =
        user("Which of the following is a mammal?\nA. shark\nB. whale\nC. trout\nD. eel\nAnswer:");
    let s = score(&m, &body) as f64;
    let expect = |mode: Mode| {
        if s >= m.threshold(mode) {
            "strong"
        } else {
            "light"
        }
    };
    for mode in [Mode::Cheap, Mode::Balanced, Mode::Quality] {
        let d = run(&body, None, Some(mode));
        assert_eq!(d.tier.name, expect(mode), "{mode:?}");
        assert_eq!(d.mode, mode);
        assert_eq!(d.threshold, Some(m.threshold(mode) as f32));
    }
    assert_eq!(parse_auto_model("auto"), Some(None));
    assert_eq!(parse_auto_model("auto:quality"), Some(Some(Mode::Quality)));
    assert_eq!(parse_auto_model("auto:cost"), Some(Some(Mode::Cheap)));
    assert_eq!(parse_auto_model("auto:fast"), None);
    assert_eq!(parse_auto_model("gpt-4o"), None);
}

#[test]
fn an_escalated_conversation_stays_on_its_tier() {
    let m = model();
    let p = policy();
    let sticky = StickyMap::new(1000, Duration::from_secs(60));
    let t0 = Instant::now();
    let first = json!({"messages": [
        {"role": "system", "content": "You are a tutor."},
        {"role": "user", "content": "hi"}]});
    let d = |body: &Value, scope: &str, at: Instant| {
        decide_at(
            Some(&m),
            &p,
            &RouteInput {
                body,
                hint_header: Some("strong"),
                mode: None,
                scope,
            },
            Some(&sticky),
            at,
        )
    };
    assert_eq!(d(&first, "acme", t0).reason, Reason::Hint);
    let follow = json!({"messages": [
        {"role": "system", "content": "You are a tutor."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "thanks"}]});
    let without_hint = |body: &Value, scope: &str, at: Instant| {
        decide_at(
            Some(&m),
            &p,
            &RouteInput {
                body,
                hint_header: None,
                mode: None,
                scope,
            },
            Some(&sticky),
            at,
        )
    };
    let later = without_hint(&follow, "acme", t0 + Duration::from_secs(10));
    assert_eq!(
        (later.tier.name.as_str(), later.reason),
        ("strong", Reason::Sticky)
    );
    // Another tenant with the same conversation is not affected.
    assert_eq!(
        without_hint(&follow, "other", t0).tier.name,
        "light",
        "scope leaks"
    );
    // After the TTL the conversation is routed afresh.
    let expired = without_hint(&follow, "acme", t0 + Duration::from_secs(500));
    assert_eq!(expired.tier.name, "light");
}

#[test]
fn router_failures_fall_back_and_never_fail_the_request() {
    let body = user("hi");
    let input = RouteInput {
        body: &body,
        hint_header: None,
        mode: Some(Mode::Quality),
        scope: "t",
    };
    let d = decide(None, &policy(), &input, None);
    assert_eq!(d.reason, Reason::RouterError);
    assert_eq!(d.reason.as_str(), "router_error");
    assert_eq!(d.tier.name, "strong");
    assert_eq!(d.score, None);
    let mut p = policy();
    p.tiers.clear();
    let d = decide(Some(&model()), &p, &input, None);
    assert_eq!(d.reason, Reason::RouterError);
}

#[test]
fn tenant_overrides_are_validated_like_the_file() {
    let models = |n: &str| match n {
        "small" | "small-alias" => Some(("small".to_string(), Some(16_000))),
        "big" => Some(("big".to_string(), None)),
        _ => None,
    };
    let channels = |c: &str| c == "official";
    let o: TenantRouterOverride = serde_json::from_value(json!({
        "tiers": [{"name": "light", "model": "small-alias"},
                  {"name": "strong", "model": "big", "channel": "official"}],
        "default_mode": "quality", "allow_hints": true}))
    .unwrap();
    let p = policy().with_override(&o, &models, &channels).unwrap();
    assert_eq!(p.tiers[0].model, "small");
    assert_eq!(p.tiers[0].context_tokens, Some(16_000));
    assert_eq!(p.tiers[1].channel.as_deref(), Some("official"));
    assert_eq!(p.default_mode, Mode::Quality);
    assert_eq!(p.fallback_tier, 1);
    let bad = [
        (
            json!({"tiers": [{"name": "light", "model": "nope"}, {"name": "s", "model": "big"}]}),
            "tenant_router.tiers[0].model",
        ),
        (
            json!({"tiers": [{"name": "light", "model": "big"}]}),
            "tenant_router.tiers",
        ),
        (
            json!({"tiers": [{"name": "a", "model": "big", "channel": "x"}, {"name": "b", "model": "big"}]}),
            "tenant_router.tiers[0].channel",
        ),
        (json!({"default_mode": "max"}), "tenant_router.default_mode"),
        (
            json!({"fallback_tier": "gold"}),
            "tenant_router.fallback_tier",
        ),
    ];
    for (v, want) in bad {
        let o: TenantRouterOverride = serde_json::from_value(v).unwrap();
        let err = policy()
            .with_override(&o, &models, &channels)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want {want}: {err}");
    }
    assert!(serde_json::from_value::<TenantRouterOverride>(json!({"tierz": []})).is_err());
}
