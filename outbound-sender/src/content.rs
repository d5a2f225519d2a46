//! Menus (Connect's interactive messages, docs/architecture.md §10) as WhatsApp lists and quick-reply
//! buttons, through Twilio's Content API: a `twilio/list-picker` (up to 10 items) or a
//! `twilio/quick-reply` (up to 3 buttons), with the numbered text menu as its
//! `twilio/text` for channels that show neither. Each choice's id is its number, so a tap
//! maps back to the full title however the button had to shorten it.
//!
//! A content is created the first time a menu is sent and kept, by what it shows, for
//! this process's life: a flow's menu costs one Content API call per sender process, then
//! none. Only inside the customer's 24 h window does WhatsApp show it; outside, nothing
//! free-form goes anyway.

use crate::config::MenuSettings;
use crate::twilio::{SendError, TwilioClient};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use waconnect_shared::message::menu::{Menu, MenuStyle};

/// WhatsApp's limits, as Twilio's content types state them.
const LIST_ITEMS: usize = 10;
const LIST_ITEM_CHARS: usize = 24;
const LIST_DESCRIPTION_CHARS: usize = 72;
const BUTTONS: usize = 3;
const BUTTON_CHARS: usize = 20;
const BODY_CHARS: usize = 1024;
/// Contents remembered; past this the memory starts over (each is one call to make again).
const KEPT: usize = 1000;

/// How a menu is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    List,
    Buttons,
    Text,
}

impl Shown {
    pub fn label(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Buttons => "buttons",
            Self::Text => "text",
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let cut: String = s.chars().take(max - 1).collect();
    format!("{}…", cut.trim_end())
}

/// The content definition that shows `menu` on WhatsApp, or why it cannot (as text).
pub fn definition(menu: &Menu, settings: &MenuSettings) -> (Shown, Option<Value>) {
    let n = menu.choices.len();
    let shown = match menu.style {
        MenuStyle::Buttons if (1..=BUTTONS).contains(&n) => Shown::Buttons,
        _ if (1..=LIST_ITEMS).contains(&n) => Shown::List,
        _ => return (Shown::Text, None),
    };
    let body = cut(&menu.heading(), BODY_CHARS);
    let id = |i: usize| (i + 1).to_string();
    let kind = match shown {
        Shown::Buttons => json!({ "twilio/quick-reply": {
            "body": body,
            "actions": menu.choices.iter().enumerate().map(|(i, c)| json!({
                "title": cut(&c.title, BUTTON_CHARS), "id": id(i),
            })).collect::<Vec<_>>(),
        }}),
        _ => json!({ "twilio/list-picker": {
            "body": body,
            "button": settings.list_button,
            "items": menu.choices.iter().enumerate().map(|(i, c)| {
                let mut item = json!({ "item": cut(&c.title, LIST_ITEM_CHARS), "id": id(i) });
                if let Some(d) = &c.description {
                    item["description"] = json!(cut(d, LIST_DESCRIPTION_CHARS));
                }
                item
            }).collect::<Vec<_>>(),
        }}),
    };
    let mut types = kind;
    types["twilio/text"] = json!({ "body": cut(&menu.as_text(), 1600) });
    let mut hasher = DefaultHasher::new();
    types.to_string().hash(&mut hasher);
    let definition = json!({
        "friendly_name": format!("waconnect-menu-{:016x}", hasher.finish()),
        "language": "en",
        "types": types,
    });
    (shown, Some(definition))
}

/// The contents this process made, by their definition's name.
#[derive(Default)]
pub struct Contents {
    made: Mutex<HashMap<String, String>>,
}

impl Contents {
    /// The content SID that shows `menu`, made now if this process has none yet; `None`
    /// (with [`Shown::Text`]) when WhatsApp cannot show it as a list or buttons.
    pub async fn for_menu(
        &self,
        twilio: &TwilioClient,
        menu: &Menu,
        settings: &MenuSettings,
    ) -> Result<(Shown, Option<String>), SendError> {
        let (shown, Some(definition)) = definition(menu, settings) else {
            return Ok((Shown::Text, None));
        };
        let name = definition["friendly_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(sid) = self.made.lock().expect("contents lock").get(&name) {
            return Ok((shown, Some(sid.clone())));
        }
        let sid = twilio.create_content(&definition).await?;
        metrics::counter!("waconnect_sender_contents_created_total").increment(1);
        let mut made = self.made.lock().expect("contents lock");
        if made.len() >= KEPT {
            made.clear();
        }
        made.insert(name, sid.clone());
        Ok((shown, Some(sid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waconnect_shared::message::menu::Choice;

    fn settings() -> MenuSettings {
        MenuSettings {
            buttons: true,
            list_button: "Choose".into(),
        }
    }

    fn menu(style: MenuStyle, n: usize) -> Menu {
        Menu::new(
            style,
            "Pick one",
            None,
            (1..=n).map(|i| Choice {
                title: format!("Option number {i} with a long title"),
                description: None,
            }),
        )
    }

    #[test]
    fn buttons_lists_and_what_fits_neither() {
        let (shown, d) = definition(&menu(MenuStyle::Buttons, 3), &settings());
        assert_eq!(shown, Shown::Buttons);
        let actions = &d.unwrap()["types"]["twilio/quick-reply"]["actions"];
        assert_eq!(actions[0]["title"], "Option number 1 wit…");
        assert_eq!(actions[2]["id"], "3");
        // Four buttons are too many for WhatsApp: a list.
        let (shown, d) = definition(&menu(MenuStyle::Buttons, 4), &settings());
        assert_eq!(shown, Shown::List);
        let d = d.unwrap();
        assert_eq!(
            d["types"]["twilio/list-picker"]["items"][3]["item"],
            "Option number 4 with a…"
        );
        assert_eq!(d["types"]["twilio/list-picker"]["button"], "Choose");
        assert!(
            d["types"]["twilio/text"]["body"]
                .as_str()
                .unwrap()
                .contains("4. Option number 4")
        );
        // Eleven do not fit a list either: the numbered text.
        assert_eq!(
            definition(&menu(MenuStyle::List, 11), &settings()),
            (Shown::Text, None)
        );
    }

    #[test]
    fn one_menu_one_name() {
        let a = definition(&menu(MenuStyle::List, 2), &settings())
            .1
            .unwrap();
        let b = definition(&menu(MenuStyle::List, 2), &settings())
            .1
            .unwrap();
        let c = definition(&menu(MenuStyle::List, 3), &settings())
            .1
            .unwrap();
        assert_eq!(a["friendly_name"], b["friendly_name"]);
        assert_ne!(a["friendly_name"], c["friendly_name"]);
    }
}
