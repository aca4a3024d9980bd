"""Prompt sets assembled for router v2 (issue 19), deterministic, written for this project.

- `chinese_set()`: parallel Chinese / English chat prompts from hand-written templates, each
  with a hard (1) or easy (0) mark and a `split` (TRAIN_TEMPLATES train, the others are only
  evaluated; no template is in both). Two kinds are short but hard and two long but easy, so
  that prompt length alone does not separate hard from easy. Used to check
  that Chinese text is read as characters, not one long token, and that a Chinese prompt
  lands near its English twin.
- `traffic_mix()`: unlabelled prompts of the kinds a gateway sees besides benchmarks (code,
  extraction, summarisation, generic chat), used only to place the modes' thresholds.

The Chinese prompts are my own translations of the English templates (not machine output).
"""

import itertools
import random

# (chinese template, english template, hard?, fillers: list of (zh dict, en dict))
_THEOREMS = [
    ({"e": "n³ − n", "k": "6"}, {"e": "n^3 - n", "k": "6"}),
    ({"e": "n⁵ − n", "k": "30"}, {"e": "n^5 - n", "k": "30"}),
    ({"e": "7ⁿ − 1", "k": "6"}, {"e": "7^n - 1", "k": "6"}),
    ({"e": "4ⁿ − 1", "k": "3"}, {"e": "4^n - 1", "k": "3"}),
    ({"e": "n(n+1)(n+2)", "k": "6"}, {"e": "n(n+1)(n+2)", "k": "6"}),
    ({"e": "11ⁿ − 4ⁿ", "k": "7"}, {"e": "11^n - 4^n", "k": "7"}),
    ({"e": "n⁷ − n", "k": "42"}, {"e": "n^7 - n", "k": "42"}),
    ({"e": "3²ⁿ − 1", "k": "8"}, {"e": "3^(2n) - 1", "k": "8"}),
]
_LANGS = [("Rust", "Rust"), ("Go", "Go"), ("C++", "C++"), ("Java", "Java")]
_STRUCTS = [
    ("LRU 缓存", "LRU cache"),
    ("跳表", "skip list"),
    ("有界阻塞队列", "bounded blocking queue"),
    ("前缀树", "trie"),
    ("最小堆", "min-heap"),
]
_SYSTEMS = [
    ("短链接服务", "URL shortener"),
    ("即时通讯系统", "instant messaging system"),
    ("网约车派单系统", "ride-hailing dispatch system"),
    ("秒杀系统", "flash-sale system"),
    ("支付对账系统", "payment reconciliation system"),
]
_SCALES = [("50", "500,000"), ("300", "3 million"), ("1000", "10 million"), ("5000", "50 million")]
_BUGS = [
    ("内存泄漏", "memory leaks"),
    ("请求超时", "request timeouts"),
    ("数据竞争", "data races"),
    ("死锁", "deadlocks"),
    ("连接池耗尽", "connection pool exhaustion"),
]
_ESTIMATORS = [
    ("岭回归", "ridge regression"),
    ("带 L2 正则的逻辑回归的牛顿迭代", "Newton's method for L2-regularised logistic regression"),
    ("高斯过程回归的后验均值", "the posterior mean of Gaussian process regression"),
    ("加权最小二乘", "weighted least squares"),
    ("线性判别分析", "linear discriminant analysis"),
]
_PAIRS = [
    (("PostgreSQL", "MongoDB", "高写入量的日志存储"), ("PostgreSQL", "MongoDB", "high-volume log storage")),
    (("Kafka", "RabbitMQ", "订单事件流"), ("Kafka", "RabbitMQ", "an order event stream")),
    (("gRPC", "REST", "微服务之间的内部调用"), ("gRPC", "REST", "internal calls between microservices")),
    (("Raft", "Paxos", "跨机房的配置存储"), ("Raft", "Paxos", "a cross-datacenter configuration store")),
    (("B+ 树", "LSM 树", "写多读少的存储引擎"), ("B+ trees", "LSM trees", "a write-heavy storage engine")),
    (("乐观锁", "悲观锁", "库存扣减"), ("optimistic locking", "pessimistic locking", "inventory deduction")),
]
_ODES = [
    ("y″ + 4y = sin(2x)", "y(0) = 0, y′(0) = 1", "y'' + 4y = sin(2x)", "y(0) = 0, y'(0) = 1"),
    ("y′ = y² − 1", "y(0) = 0", "y' = y^2 - 1", "y(0) = 0"),
    ("x y′ + 2y = x³", "y(1) = 2", "x y' + 2y = x^3", "y(1) = 2"),
    ("y″ − 3y′ + 2y = eˣ", "y(0) = 1, y′(0) = 0", "y'' - 3y' + 2y = e^x", "y(0) = 1, y'(0) = 0"),
    ("y′ + y tan x = cos² x", "y(0) = 1", "y' + y tan x = cos^2 x", "y(0) = 1"),
]

_WORDS = [
    ("早上好", "good morning"),
    ("谢谢你的帮助", "thank you for your help"),
    ("生日快乐", "happy birthday"),
    ("我饿了", "I am hungry"),
    ("明天见", "see you tomorrow"),
    ("火车站在哪里", "where is the train station"),
    ("这个多少钱", "how much is this"),
    ("祝你好运", "good luck"),
]
_COUNTRIES = [
    ("法国", "France"),
    ("日本", "Japan"),
    ("巴西", "Brazil"),
    ("埃及", "Egypt"),
    ("加拿大", "Canada"),
    ("澳大利亚", "Australia"),
    ("意大利", "Italy"),
    ("印度", "India"),
]
_ANIMALS = [("猫", "cats"), ("狗", "dogs"), ("企鹅", "penguins"), ("熊猫", "pandas"), ("长颈鹿", "giraffes"), ("鹦鹉", "parrots")]
_SENTENCES = [
    ("把文件发给我。", "Send me the file."),
    ("你迟到了。", "You are late."),
    ("明天之前改完。", "Fix it before tomorrow."),
    ("别再问了。", "Stop asking."),
    ("这个方案不行。", "This plan does not work."),
    ("快点回复。", "Reply faster."),
]
_SYN = [("高兴", "happy"), ("美丽", "beautiful"), ("困难", "difficult"), ("迅速", "fast"), ("聪明", "smart"), ("安静", "quiet")]
_PEOPLE = [("妈妈", "mom"), ("同事", "colleague"), ("老朋友", "old friend"), ("弟弟", "little brother"), ("老师", "teacher")]
_TEXTS = [
    ("周一的会议改到周三，因为投影仪坏了。", "The Monday meeting moved to Wednesday because the projector broke."),
    ("公司食堂下周起延长营业到晚上八点。", "From next week the canteen stays open until 8 pm."),
    ("由于暴雨，今天下午的足球比赛取消。", "Because of heavy rain, this afternoon's football match is cancelled."),
    ("新版本修复了登录页面的两个小问题。", "The new release fixes two small bugs on the login page."),
    ("图书馆周末闭馆进行设备检修。", "The library is closed this weekend for maintenance."),
]
_AGES = [("5", "5"), ("7", "7"), ("9", "9"), ("12", "12")]
# Short but hard, and long but easy: so that length alone cannot separate the set.
_SHORT_THEOREMS = [
    ("√2 是无理数", "sqrt(2) is irrational"),
    ("素数有无穷多个", "there are infinitely many primes"),
    ("e 是无理数", "e is irrational"),
    ("实数集不可数", "the real numbers are uncountable"),
    ("有限整环是域", "every finite integral domain is a field"),
    ("√3 不是有理数", "sqrt(3) is not rational"),
]
_ALGOS = [
    ("红黑树的删除", "red-black tree deletion"),
    ("KMP 字符串匹配", "KMP string matching"),
    ("无锁栈", "a lock-free stack"),
    ("Raft 选主", "Raft leader election"),
    ("后缀数组", "a suffix array"),
]
_LONG_TEXTS = [
    (_TEXTS[0][0] + _TEXTS[1][0] + _TEXTS[2][0] + "请大家互相转告，谢谢配合。",
     _TEXTS[0][1] + " " + _TEXTS[1][1] + " " + _TEXTS[2][1] + " Please tell each other, thank you."),
    (_TEXTS[1][0] + _TEXTS[3][0] + _TEXTS[4][0] + "如有疑问请联系前台，我们会尽快回复。",
     _TEXTS[1][1] + " " + _TEXTS[3][1] + " " + _TEXTS[4][1] + " Ask the front desk if you have questions; we will reply soon."),
    (_TEXTS[2][0] + _TEXTS[4][0] + _TEXTS[0][0] + "下周的安排另行通知，祝大家周末愉快。",
     _TEXTS[2][1] + " " + _TEXTS[4][1] + " " + _TEXTS[0][1] + " Next week's plan follows; have a nice weekend."),
    (_TEXTS[3][0] + _TEXTS[0][0] + _TEXTS[1][0] + "感谢各位同事这段时间的辛苦付出。",
     _TEXTS[3][1] + " " + _TEXTS[0][1] + " " + _TEXTS[1][1] + " Thanks to all colleagues for their hard work."),
]


def _templates():
    """(name, hard, zh template(s), en template(s), fillers as (zh dict, en dict) pairs); a
    list of templates gives several phrasings, each paired with its translation."""
    t = []
    t.append(("prove_divisible", 1, ["证明：对任意正整数 n，{e} 能被 {k} 整除。", "请用数学归纳法严格证明 {e} 对所有正整数 n 都是 {k} 的倍数。"],
              ["Prove that for every positive integer n, {e} is divisible by {k}.", "Use induction to prove rigorously that {e} is a multiple of {k} for all positive integers n."],
              [(z, e) for z, e in _THEOREMS]))
    t.append(("concurrent_struct", 1,
              "用 {lang} 实现一个线程安全的{ds}，支持并发读写，并分析每个操作的时间复杂度。",
              "Implement a thread-safe {ds} in {lang} that supports concurrent reads and writes, and analyse the time complexity of each operation.",
              [({"lang": lz, "ds": dz}, {"lang": le, "ds": de}) for (lz, le), (dz, de) in itertools.product(_LANGS, _STRUCTS)]))
    t.append(("system_design", 1,
              "设计一个能支撑 {n} 万日活用户的{s}，说明数据库分片、缓存和故障恢复方案之间的取舍。",
              "Design a {s} that supports {n} daily active users; explain the tradeoffs between database sharding, caching and failure recovery.",
              [({"n": nz, "s": sz}, {"n": ne, "s": se}) for (nz, ne), (sz, se) in itertools.product(_SCALES, _SYSTEMS)]))
    t.append(("probability", 1,
              "一个袋子里有 {a} 个红球和 {b} 个蓝球，不放回地取出 {c} 个。求至少取到两个红球的概率，并写出完整的推导过程。",
              "A bag holds {a} red and {b} blue balls, and {c} are drawn without replacement. What is the probability of drawing at least two red balls? Show the full derivation.",
              [({"a": str(a), "b": str(b), "c": str(c)},) * 2 for a, b, c in itertools.product((4, 5, 7, 9), (3, 6, 8), (3, 4))]))
    t.append(("debug_plan", 1,
              "我的 {lang} 服务在高并发下偶尔出现{bug}，请分析可能的根本原因，并给出一步一步的排查和修复计划。",
              "My {lang} service sometimes shows {bug} under high concurrency. Analyse the likely root causes and give a step-by-step plan to find and fix them.",
              [({"lang": lz, "bug": bz}, {"lang": le, "bug": be}) for (lz, le), (bz, be) in itertools.product(_LANGS, _BUGS)]))
    t.append(("derive_estimator", 1,
              ["推导{m}的闭式解或迭代公式，并严格分析正则化强度对偏差和方差的影响。", "从零开始推导{m}，写出每一步，并讨论它在特征高度相关时的数值稳定性。"],
              ["Derive the closed form or update rule of {m}, and rigorously analyse how the regularisation strength affects bias and variance.", "Derive {m} from scratch, showing every step, and discuss its numerical stability when features are highly correlated."],
              [({"m": z}, {"m": e}) for z, e in _ESTIMATORS]))
    t.append(("compare_tech", 1,
              "比较 {a} 和 {b} 在{c}场景下的优缺点，给出可量化的评估标准，并说明在什么约束下你会选择哪一个。",
              "Compare {a} and {b} for {c}: give quantitative evaluation criteria and say under which constraints you would choose each.",
              [(dict(zip("abc", z)), dict(zip("abc", e))) for z, e in _PAIRS]))
    t.append(("solve_ode", 1,
              ["求解微分方程 {eq}，并验证你的解满足初始条件 {ic}。", "在初始条件 {ic} 下解 {eq}，说明解的存在区间并检验结果。"],
              ["Solve the differential equation {eq} and verify that your solution satisfies the initial condition {ic}.", "Solve {eq} with {ic}, state the interval where the solution exists and check the result."],
              [({"eq": a, "ic": b}, {"eq": c, "ic": d}) for a, b, c, d in _ODES]))
    t.append(("translate", 0, ["把“{w}”翻译成英文。", "“{w}”用英语怎么说？", "请翻译：{w}"], ["Translate \"{w}\" into French.", "How do you say \"{w}\" in Spanish?", "Translate: {w}"],
              [({"w": z}, {"w": e}) for z, e in _WORDS]))
    t.append(("capital", 0, ["{c}的首都是哪个城市？", "{c}的首都叫什么？", "告诉我{c}的首都。"], ["What is the capital of {c}?", "What's the capital city of {c}?", "Tell me the capital of {c}."],
              [({"c": z}, {"c": e}) for z, e in _COUNTRIES]))
    t.append(("joke", 0, ["给我讲一个关于{a}的笑话。", "说个和{a}有关的冷笑话吧", "写一首关于{a}的四行小诗。"], ["Tell me a joke about {a}.", "Got a silly joke about {a}?", "Write a four-line poem about {a}."],
              [({"a": z}, {"a": e}) for z, e in _ANIMALS]))
    t.append(("polite", 0, ["帮我把这句话改得更礼貌一些：{s}", "这句话太生硬了，帮我换个说法：{s}", "改正这句话的语气：{s}"], ["Rewrite this sentence to sound more polite: {s}", "This sounds too harsh, please rephrase it: {s}", "Fix the tone of this sentence: {s}"],
              [({"s": z}, {"s": e}) for z, e in _SENTENCES]))
    t.append(("synonyms", 0, ["“{w}”有哪些近义词？", "给我五个和“{w}”意思相近的词。", "“{w}”的反义词是什么？"], ["What are some synonyms of \"{w}\"?", "Give me five words similar to \"{w}\".", "What is the opposite of \"{w}\"?"],
              [({"w": z}, {"w": e}) for z, e in _SYN]))
    t.append(("birthday", 0, ["写一条祝{p}生日快乐的简短消息。", "帮我给{p}写一句新年祝福。", "给{p}写一张简短的感谢卡。"], ["Write a short message wishing my {p} a happy birthday.", "Write a one-line New Year greeting for my {p}.", "Write a short thank-you card for my {p}."],
              [({"p": z}, {"p": e}) for z, e in _PEOPLE]))
    t.append(("summary", 0, ["用一句话总结：{t}", "这段话的重点是什么？{t}", "把下面这句话改写得更简洁：{t}"], ["Summarize in one sentence: {t}", "What is the main point here? {t}", "Make this sentence shorter: {t}"],
              [({"t": z}, {"t": e}) for z, e in _TEXTS]))
    t.append(("books", 0, ["推荐三本适合 {a} 岁孩子读的书。", "给 {a} 岁的孩子推荐几个周末活动。", "{a} 岁的孩子每天应该睡多久？"], ["Recommend three books for a {a}-year-old child.", "Suggest some weekend activities for a {a}-year-old.", "How long should a {a}-year-old sleep each night?"],
              [({"a": z}, {"a": e}) for z, e in _AGES]))
    t.append(("prove_short", 1, ["证明{x}。", "请证明：{x}"], ["Prove that {x}.", "Show that {x}."],
              [({"x": z}, {"x": e}) for z, e in _SHORT_THEOREMS]))
    t.append(("translate_long", 0, ["把下面这段话翻译成英文：{t}", "请把这段通知翻译成英语：{t}"],
              ["Translate this paragraph into French: {t}", "Please translate this notice into German: {t}"],
              [({"t": z}, {"t": e}) for z, e in _LONG_TEXTS]))
    t.append(("implement_short", 1, ["用{lang}实现{a}。", "手写{a}（{lang}）"], ["Implement {a} in {lang}.", "Write {a} in {lang} from scratch."],
              [({"lang": lz, "a": az}, {"lang": le, "a": ae}) for (lz, le), (az, ae) in itertools.product(_LANGS[:2], _ALGOS)]))
    t.append(("typos_long", 0, ["帮我检查下面这段话有没有错别字：{t}", "这段通知的标点用得对吗？{t}"],
              ["Check this paragraph for typos: {t}", "Is the punctuation in this notice right? {t}"],
              [({"t": z}, {"t": e}) for z, e in _LONG_TEXTS]))
    return t


# Templates that train; all others are only evaluated. Half of the hard and half of the easy
# kinds, and one short-hard and one long-easy kind on each side.
TRAIN_TEMPLATES = {
    "prove_divisible", "concurrent_struct", "system_design", "probability",
    "translate", "capital", "joke", "polite", "prove_short", "translate_long",
}


def chinese_set():
    """Rows {template, hard, split, zh, en}: zh / en are request bodies."""
    rows = []
    tmpl = _templates()
    train_names = TRAIN_TEMPLATES
    for name, h, zts, ets, fillers in tmpl:
        if isinstance(zts, str):
            zts, ets = [zts], [ets]
        for zt, et in zip(zts, ets):
            for zf, ef in fillers:
                rows.append({
                    "template": name,
                    "hard": h,
                    "split": "train" if name in train_names else "eval",
                    "zh": _req(zt.format(**zf)),
                    "en": _req(et.format(**ef)),
                })
    return rows


def _req(text):
    return {"model": "auto", "messages": [{"role": "user", "content": text}]}


_CODE_TASKS = [
    "Write a {lang} function that {task}.",
    "Why does this {lang} code fail with an error? It should {task}.\n```\n{snippet}\n```",
    "Add unit tests for a {lang} function that {task}.",
    "Refactor this {lang} code so that it can {task} without global state:\n```\n{snippet}\n```",
]
_CODE_WHAT = [
    "parses an ISO 8601 date", "deduplicates a list while keeping order", "reads a CSV file and sums a column",
    "retries an HTTP call with exponential backoff", "merges two sorted arrays", "validates an email address",
    "computes a moving average", "counts word frequencies in a file",
]
_SNIPPETS = [
    "for i in range(len(xs)): total += xs[i+1]",
    "let v = map.get(&k).unwrap(); map.insert(k, v + 1);",
    "if (user = null) { return; }",
    "const data = await fetch(url).json();",
]
_EXTRACT = [
    "Extract the name, date and amount from this invoice text as JSON: \"Invoice {n} from {who}, dated {d}, total {a} EUR.\"",
    "List every email address in this text: \"Contact {who} at {w}@example.com or sales@example.org before {d}.\"",
    "From this message, pull out the meeting time and the room: \"Hi all, the review with {who} is on {d} at 3pm in room {n}.\"",
]
_EXTRACT_F = [
    ("2024-117", "Acme GmbH", "3 March 2024", "1,250.00", "anna"),
    ("88-A", "Blue River Ltd", "12/09/2023", "89.90", "li.wei"),
    ("5521", "Nordic Parts AB", "2025-01-30", "14,002.50", "p.garcia"),
    ("310", "Studio Nine", "July 4", "600", "tom"),
]
_SUMMARY = [
    "Summarize the following support ticket in two bullet points:\n{t}",
    "TL;DR of this paragraph please: {t}",
    "Write a one-line summary for a changelog: {t}",
]
_SUMMARY_T = [
    "The customer reports that the export button does nothing on Safari 17. They tried clearing the cache and logging out. The issue started after last Tuesday's release and affects their whole team of 12 people.",
    "Our quarterly revenue grew 8% year over year, mostly from the enterprise tier, while churn in the self-serve plan rose slightly. Hiring is paused until the next planning cycle, except for two support roles.",
    "The city council approved the new bike lane on Main Street after a three-hour meeting. Construction starts in May and will close one car lane for six weeks. Local shops asked for signage during the works.",
    "This pull request replaces the hand-written retry loop with the shared backoff helper, adds jitter, and caps the total wait at 30 seconds. Tests cover the timeout and the success-after-retry paths.",
]
_CHAT = [
    "What's a good name for a golden retriever puppy?",
    "How do I politely decline a meeting invitation?",
    "Give me three ideas for a rainy Sunday with kids.",
    "What's the difference between a latte and a flat white?",
    "Can you explain what inflation is in simple terms?",
    "Write a short LinkedIn post announcing that I joined a new company as a product designer.",
    "What should I pack for a weekend hiking trip?",
    "Draft a friendly reminder email about an unpaid invoice.",
    "Explain the rules of chess castling.",
    "Suggest a vegetarian dinner I can cook in 20 minutes.",
    "Is it better to rent or buy a house? Give the main factors.",
    "How many hours of sleep does an adult need?",
]


def traffic_mix():
    """Unlabelled request bodies by kind: {"code": [...], "extraction": [...], "summarisation":
    [...], "chat": [...]}. Deterministic."""
    code = []
    for k, tmpl in enumerate(_CODE_TASKS):
        for lang, task, snip in itertools.product(("Python", "Rust", "TypeScript"), _CODE_WHAT, _SNIPPETS[:1]):
            code.append(tmpl.format(lang=lang, task=task, snippet=_SNIPPETS[(k + len(code)) % len(_SNIPPETS)]))
    ext = [t.format(n=n, who=who, d=d, a=a, w=w) for t in _EXTRACT for n, who, d, a, w in _EXTRACT_F]
    summ = [t.format(t=x) for t in _SUMMARY for x in _SUMMARY_T]
    rng = random.Random(19)
    rng.shuffle(code)
    return {
        "code": [_req(x) for x in code],
        "extraction": [_req(x) for x in ext],
        "summarisation": [_req(x) for x in summ],
        "chat": [_req(x) for x in _CHAT],
    }


if __name__ == "__main__":
    rows = chinese_set()
    print(len(rows), sum(r["hard"] for r in rows), sum(r["split"] == "eval" for r in rows))
    print({k: len(v) for k, v in traffic_mix().items()})
