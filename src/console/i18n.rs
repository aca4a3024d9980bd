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

fn tables() -> &'static (Table, Table) {
    static T: OnceLock<(Table, Table)> = OnceLock::new();
    T.get_or_init(|| {
        #[derive(serde::Deserialize)]
        struct File {
            en: Table,
            zh: Table,
        }
        match toml::from_str::<File>(include_str!("i18n.toml")) {
            Ok(f) => (f.en, f.zh),
            Err(e) => {
                tracing::error!(error = %e, "console translations do not parse");
                (Table::new(), Table::new())
            }
        }
    })
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
