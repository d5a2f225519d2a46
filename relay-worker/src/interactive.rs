//! What a Connect item's content becomes on WhatsApp: interactive messages from flows and
//! Lex bots (`application/vnd.amazonaws.connect.message.interactive`, docs/architecture.md §10) as a
//! [`Menu`] the sender shows as a list or buttons (its numbered text otherwise), other
//! templates as readable text; `text/markdown` in WhatsApp's formatting; the rest as it is.

use serde::Deserialize;
use serde_json::Value;
use waconnect_shared::message::menu::{Choice, MAX_CHOICES, Menu, MenuStyle};

pub const INTERACTIVE: &str = "application/vnd.amazonaws.connect.message.interactive";
pub const MARKDOWN: &str = "text/markdown";

/// The text for the customer, and the menu it offers, if any.
pub fn for_whatsapp(content_type: &str, content: &str) -> (String, Option<Menu>) {
    match content_type {
        MARKDOWN => (crate::markdown::to_whatsapp(content), None),
        INTERACTIVE => match interactive(content) {
            Some(Shown::Menu(menu)) => (menu.as_text(), Some(menu)),
            Some(Shown::Text(text)) => (text, None),
            // Not the JSON Connect documents: better its text than nothing.
            None => (content.to_owned(), None),
        },
        _ => (content.to_owned(), None),
    }
}

enum Shown {
    Menu(Menu),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Template {
    template_type: String,
    #[serde(default)]
    data: Data,
}

#[derive(Deserialize, Default)]
struct Data {
    #[serde(default)]
    content: Content,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Content {
    #[serde(default)]
    title: String,
    #[serde(default)]
    subtitle: Option<String>,
    #[serde(default)]
    elements: Vec<Value>,
    #[serde(default)]
    time_zone_offset: Option<i64>,
    #[serde(default)]
    timeslots: Vec<Timeslot>,
}

#[derive(Deserialize)]
struct Timeslot {
    date: String,
    #[serde(default)]
    duration: Option<u64>,
}

fn text_of(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn choices(elements: &[Value]) -> Vec<Choice> {
    elements
        .iter()
        .filter_map(|e| {
            Some(Choice {
                title: text_of(e, "title")?,
                description: text_of(e, "subtitle"),
            })
        })
        .collect()
}

fn interactive(content: &str) -> Option<Shown> {
    let t: Template = serde_json::from_str(content).ok()?;
    let c = t.data.content;
    let subtitle = c.subtitle.as_deref();
    Some(match t.template_type.as_str() {
        "ListPicker" | "Panel" => Shown::Menu(Menu::new(
            MenuStyle::List,
            &c.title,
            subtitle,
            choices(&c.elements),
        )),
        "QuickReply" => Shown::Menu(Menu::new(
            MenuStyle::Buttons,
            &c.title,
            subtitle,
            choices(&c.elements),
        )),
        "TimePicker" => {
            let slots = c.timeslots.iter().take(MAX_CHOICES).map(|s| Choice {
                title: slot_title(&s.date, c.time_zone_offset),
                description: s.duration.map(|d| format!("{d} min")),
            });
            Shown::Menu(Menu::new(MenuStyle::List, &c.title, subtitle, slots))
        }
        // A carousel of cards has no WhatsApp equivalent: each card's title and options.
        _ => {
            let mut lines = vec![c.title.clone()];
            lines.extend(subtitle.map(str::to_owned));
            for card in &c.elements {
                let inner = card.pointer("/data/content").unwrap_or(card);
                if let Some(title) = text_of(inner, "title") {
                    lines.push(format!("• {title}"));
                }
                let options = inner
                    .get("elements")
                    .and_then(Value::as_array)
                    .map(|e| choices(e))
                    .unwrap_or_default();
                lines.extend(options.into_iter().map(|o| format!("   – {}", o.title)));
            }
            Shown::Text(
                lines
                    .into_iter()
                    .filter(|l| !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        }
    })
}

/// A time slot as the customer reads it, in the picker's time zone (minutes east of UTC).
fn slot_title(date: &str, offset_minutes: Option<i64>) -> String {
    let Ok(at) = chrono::DateTime::parse_from_rfc3339(date)
        .or_else(|_| chrono::DateTime::parse_from_str(date, "%Y-%m-%dT%H:%M%z"))
    else {
        return date.to_owned();
    };
    let zone = offset_minutes
        .and_then(|m| chrono::FixedOffset::east_opt(i32::try_from(m * 60).ok()?))
        .unwrap_or_else(|| *at.offset());
    at.with_timezone(&zone)
        .format("%a %-d %b %H:%M")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_picker_is_a_list_menu_with_its_text_fallback() {
        let content = r#"{"templateType":"ListPicker","version":"1.0","data":{"content":{"title":"Which department?","subtitle":"Tap to select","elements":[{"title":"Billing","subtitle":"Invoices"},{"title":"Returns"}]}}}"#;
        let (text, menu) = for_whatsapp(INTERACTIVE, content);
        let menu = menu.expect("a menu");
        assert_eq!(menu.style, MenuStyle::List);
        assert_eq!(menu.titles(), ["Billing", "Returns"]);
        assert_eq!(menu.choices[0].description.as_deref(), Some("Invoices"));
        assert_eq!(text, menu.as_text());
    }

    #[test]
    fn quick_replies_are_buttons_and_time_slots_a_list() {
        let quick = r#"{"templateType":"QuickReply","version":"1.0","data":{"content":{"title":"How was it?","elements":[{"title":"Great"},{"title":"Bad"}]}}}"#;
        let (_, menu) = for_whatsapp(INTERACTIVE, quick);
        assert_eq!(menu.unwrap().style, MenuStyle::Buttons);
        let time = r#"{"templateType":"TimePicker","version":"1.0","data":{"content":{"title":"When?","timeZoneOffset":60,"timeslots":[{"date":"2026-12-02T09:00+00:00","duration":30}]}}}"#;
        let menu = for_whatsapp(INTERACTIVE, time).1.unwrap();
        assert_eq!(menu.titles(), ["Wed 2 Dec 10:00"]);
        assert_eq!(menu.choices[0].description.as_deref(), Some("30 min"));
    }

    #[test]
    fn carousels_read_as_text_and_unknown_json_passes() {
        let carousel = r#"{"templateType":"Carousel","version":"1.0","data":{"content":{"title":"Our plans","elements":[{"templateType":"Panel","data":{"content":{"title":"Basic","elements":[{"title":"Choose Basic"}]}}}]}}}"#;
        let (text, menu) = for_whatsapp(INTERACTIVE, carousel);
        assert!(menu.is_none());
        assert_eq!(text, "Our plans\n• Basic\n   – Choose Basic");
        assert_eq!(for_whatsapp(INTERACTIVE, "{oops").0, "{oops");
        assert_eq!(for_whatsapp("text/plain", "**hi**").0, "**hi**");
        assert_eq!(for_whatsapp(MARKDOWN, "**hi**").0, "*hi*");
    }
}
