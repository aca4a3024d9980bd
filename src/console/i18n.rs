//! The console's two languages. Every text of every page is a key of `i18n.toml`, present in
//! both tables (a test checks that, and that every key a template uses exists).

use axum::http::HeaderMap;
use std::collections::BTreeMap;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "zh" | "zh-CN" | "zh-Hans" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The browser's preference: Chinese when it asks for it first, else English.
    pub fn from_accept(headers: &HeaderMap) -> Lang {
        let first = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if first.starts_with("zh") {
            Lang::Zh
        } else {
            Lang::En
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The HTML `lang` attribute.
    pub fn html(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }
}

type Table = BTreeMap<String, String>;

struct Tables {
    en: Table,
    zh: Table,
    /// The admin API's messages in Chinese: (English pattern, translation), `{}` the variable
    /// parts.
    api_zh: Vec<(String, String)>,
    /// The few the console says otherwise in English (where the API names a field).
    api_en: Vec<(String, String)>,
}

fn all() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        #[derive(serde::Deserialize)]
        struct File {
            en: Table,
            zh: Table,
            api_zh: Table,
            api_en: Table,
        }
        match toml::from_str::<File>(include_str!("i18n.toml")) {
            Ok(f) => Tables {
                en: f.en,
                zh: f.zh,
                api_zh: f.api_zh.into_iter().collect(),
                api_en: f.api_en.into_iter().collect(),
            },
            Err(e) => {
                tracing::error!(error = %e, "console translations do not parse");
                Tables {
                    en: Table::new(),
                    zh: Table::new(),
                    api_zh: Vec::new(),
                    api_en: Vec::new(),
                }
            }
        }
    })
}

fn tables() -> (&'static Table, &'static Table) {
    let t = all();
    (&t.en, &t.zh)
}

/// The variable parts of `text` where `pattern` has `{}`, if the rest matches exactly.
fn captures<'a>(pattern: &str, text: &'a str) -> Option<Vec<&'a str>> {
    let pieces: Vec<&str> = pattern.split("{}").collect();
    let mut rest = text.strip_prefix(pieces[0])?;
    let mut found = Vec::new();
    for (i, piece) in pieces.iter().enumerate().skip(1) {
        let last = i == pieces.len() - 1;
        let at = if last {
            if piece.is_empty() {
                rest.len()
            } else {
                rest.strip_suffix(piece)?.len()
            }
        } else {
            rest.find(piece)?
        };
        found.push(&rest[..at]);
        rest = &rest[at + piece.len()..];
    }
    (rest.is_empty()).then_some(found)
}

/// An admin API message (or the console's own) in the viewer's language: known ones
/// translated with their variable parts kept, others after a translated lead.
pub fn api_message(lang: Lang, message: &str) -> String {
    let cjk = |c: char| ('\u{4e00}'..='\u{9fff}').contains(&c);
    if message.chars().any(cjk) {
        return message.to_string();
    }
    let table = match lang {
        Lang::En => &all().api_en,
        Lang::Zh => &all().api_zh,
    };
    for (pattern, said) in table {
        if let Some(parts) = captures(pattern, message) {
            let mut out = String::new();
            let mut parts = parts.into_iter();
            for (i, piece) in said.split("{}").enumerate() {
                if i > 0 {
                    out.push_str(parts.next().unwrap_or(""));
                }
                out.push_str(piece);
            }
            return out;
        }
    }
    match lang {
        Lang::En => message.to_string(),
        Lang::Zh => format!("{}{message}", text(lang, "api_error_lead")),
    }
}

/// The language's table as a template value, built once.
pub fn value(lang: Lang) -> minijinja::Value {
    static V: OnceLock<(minijinja::Value, minijinja::Value)> = OnceLock::new();
    let (en, zh) = V.get_or_init(|| {
        (
            minijinja::Value::from_serialize(table(Lang::En)),
            minijinja::Value::from_serialize(table(Lang::Zh)),
        )
    });
    match lang {
        Lang::En => en.clone(),
        Lang::Zh => zh.clone(),
    }
}

/// One text in a language.
pub fn text(lang: Lang, key: &str) -> String {
    table(lang).get(key).cloned().unwrap_or_default()
}

pub fn table(lang: Lang) -> &'static Table {
    let (en, zh) = tables();
    match lang {
        Lang::En => en,
        Lang::Zh => zh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_messages_are_translated_with_their_variable_parts() {
        assert_eq!(
            api_message(Lang::Zh, "Model `gpt-9` is not configured."),
            "模型 `gpt-9` 未配置。"
        );
        assert_eq!(
            api_message(Lang::Zh, "redemption code not found"),
            "兑换码不存在。"
        );
        assert_eq!(api_message(Lang::Zh, "widget not found"), "未找到：widget");
        assert_eq!(
            api_message(Lang::Zh, "something new"),
            "操作未完成：something new"
        );
        assert_eq!(api_message(Lang::En, "x not found"), "x not found");
        assert_eq!(api_message(Lang::Zh, "已是中文"), "已是中文");
        assert_eq!(
            api_message(Lang::En, "`expires_at` is in the past"),
            "The expiry date is in the past."
        );
        // Every pattern's translation has as many variable parts.
        for (en, zh) in all().api_zh.iter().chain(&all().api_en) {
            assert_eq!(en.matches("{}").count(), zh.matches("{}").count(), "{en}");
        }
    }

    #[test]
    fn both_languages_have_every_key() {
        let (en, zh) = tables();
        assert!(en.len() > 50, "{}", en.len());
        let en_keys: Vec<_> = en.keys().collect();
        let zh_keys: Vec<_> = zh.keys().collect();
        let missing_zh: Vec<_> = en_keys.iter().filter(|k| !zh.contains_key(**k)).collect();
        let missing_en: Vec<_> = zh_keys.iter().filter(|k| !en.contains_key(**k)).collect();
        assert!(missing_zh.is_empty(), "missing in zh: {missing_zh:?}");
        assert!(missing_en.is_empty(), "missing in en: {missing_en:?}");
    }

    /// Every `tr.key` a template names is translated (templates render `tr` strictly too).
    #[test]
    fn templates_use_only_known_keys() {
        let (en, _) = tables();
        for (name, text) in super::super::pages::TEMPLATES {
            let mut rest = *text;
            while let Some(i) = rest.find("tr.") {
                rest = &rest[i + 3..];
                let key: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    en.contains_key(&key),
                    "{name}: tr.{key} is not in i18n.toml"
                );
            }
        }
    }
}
