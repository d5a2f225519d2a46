//! A choice offered to the customer: a Connect interactive message (ListPicker,
//! QuickReply, TimePicker, Panel) as WhatsApp can show it — a list or quick-reply buttons
//! (Twilio's Content API, inside the 24 h window), or a numbered text menu, which always
//! works. The customer's answer goes back to the chat as the choice's title, as Connect's
//! own chat client sends it, so flows and Lex bots see what they offered.

use serde::{Deserialize, Serialize};

/// Choices a menu keeps (WhatsApp's list holds 10; Connect's ListPicker allows more, and
/// the numbered text shows up to this many).
pub const MAX_CHOICES: usize = 20;
/// Characters kept of a title or description from the wire.
pub const MAX_TEXT: usize = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MenuStyle {
    /// A list behind a button (WhatsApp: up to 10 items).
    List,
    /// Quick-reply buttons (WhatsApp: up to 3).
    Buttons,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Menu {
    pub style: MenuStyle,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    pub choices: Vec<Choice>,
}

fn capped(s: &str) -> String {
    s.trim().chars().take(MAX_TEXT).collect()
}

impl Menu {
    /// A menu of at most [`MAX_CHOICES`] non-empty choices, every text capped.
    pub fn new(
        style: MenuStyle,
        title: &str,
        subtitle: Option<&str>,
        choices: impl IntoIterator<Item = Choice>,
    ) -> Self {
        Self {
            style,
            title: capped(title),
            subtitle: subtitle.map(capped).filter(|s| !s.is_empty()),
            choices: choices
                .into_iter()
                .filter(|c| !c.title.trim().is_empty())
                .take(MAX_CHOICES)
                .map(|c| Choice {
                    title: capped(&c.title),
                    description: c
                        .description
                        .as_deref()
                        .map(capped)
                        .filter(|d| !d.is_empty()),
                })
                .collect(),
        }
    }

    /// The title and subtitle, as the text above the choices.
    pub fn heading(&self) -> String {
        match &self.subtitle {
            Some(s) => format!("{}\n{s}", self.title),
            None => self.title.clone(),
        }
    }

    /// The numbered text menu: what any WhatsApp client shows, and what a number in reply
    /// maps back from.
    pub fn as_text(&self) -> String {
        let mut text = self.heading();
        for (i, c) in self.choices.iter().enumerate() {
            text.push_str(&format!("\n{}. {}", i + 1, c.title));
            if let Some(d) = &c.description {
                text.push_str(&format!(" — {d}"));
            }
        }
        text.push_str("\nReply with the number of your choice.");
        text
    }

    pub fn titles(&self) -> Vec<String> {
        self.choices.iter().map(|c| c.title.clone()).collect()
    }
}

/// The choice a customer's reply names among `titles`: a button's id (`payload`, the
/// choice's number), a number typed in reply to the text menu ("2", "2."), or a title
/// typed out (any case).
pub fn chosen<'a>(titles: &'a [String], payload: Option<&str>, reply: &str) -> Option<&'a str> {
    let by_number = |s: &str| {
        let n: usize = s.trim().trim_end_matches(['.', ')']).parse().ok()?;
        titles.get(n.checked_sub(1)?).map(String::as_str)
    };
    payload
        .and_then(by_number)
        .or_else(|| by_number(reply))
        .or_else(|| {
            titles
                .iter()
                .find(|t| t.eq_ignore_ascii_case(reply.trim()))
                .map(String::as_str)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn menu() -> Menu {
        Menu::new(
            MenuStyle::List,
            "Which department?",
            Some("Tap to choose"),
            ["Billing", "Returns", ""].map(|t| Choice {
                title: t.into(),
                description: (t == "Returns").then(|| "labels, refunds".into()),
            }),
        )
    }

    #[test]
    fn the_text_menu_numbers_the_choices() {
        assert_eq!(
            menu().as_text(),
            "Which department?\nTap to choose\n1. Billing\n2. Returns — labels, refunds\nReply with the number of your choice."
        );
    }

    #[test]
    fn replies_map_back_by_id_number_or_title() {
        let titles = menu().titles();
        assert_eq!(chosen(&titles, Some("2"), "Retur…"), Some("Returns"));
        assert_eq!(chosen(&titles, None, " 1. "), Some("Billing"));
        assert_eq!(chosen(&titles, None, "returns"), Some("Returns"));
        assert_eq!(chosen(&titles, None, "3"), None);
        assert_eq!(chosen(&titles, None, "0"), None);
        assert_eq!(chosen(&titles, None, "my order is late"), None);
    }
}
