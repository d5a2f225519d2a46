//! A contact card (vCard 2.1–4.0) a customer shares, as text an agent can read: the name,
//! organisation, phone numbers and e-mail addresses. Connect does not show a .vcf by
//! default, and an agent mostly wants the number anyway.

/// Lines of the card we read, and values of one kind we list: a card is small, and one
/// from the wire is capped like everything else.
const MAX_LINES: usize = 500;
const MAX_VALUES: usize = 10;
const MAX_VALUE_CHARS: usize = 200;

/// The card's summary, e.g. "Contact card: Ana Silva (Acme)\nphone: +44 20 7946 0000".
/// `None` when the text holds no card.
pub fn summary(text: &str) -> Option<String> {
    if !text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .to_ascii_uppercase()
        .starts_with("BEGIN:VCARD")
    {
        return None;
    }
    let mut cards: Vec<Card> = Vec::new();
    for line in unfold(text).into_iter().take(MAX_LINES) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        // `TEL;TYPE=CELL` → `TEL`; `item1.EMAIL` → `EMAIL`.
        let property = name
            .split(';')
            .next()
            .unwrap_or_default()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let value = unescape(value.trim());
        if property == "BEGIN" {
            cards.push(Card::default());
            continue;
        }
        let Some(card) = cards.last_mut() else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        match property.as_str() {
            "FN" => card.name = Some(value),
            "N" if card.name.is_none() => {
                // Family;Given;Middle;Prefix;Suffix
                let parts: Vec<&str> = value.split(';').collect();
                let name = [parts.get(1), parts.first()]
                    .into_iter()
                    .flatten()
                    .filter(|p| !p.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                if !name.is_empty() {
                    card.name = Some(name);
                }
            }
            "ORG" => card.org = Some(value.replace(';', ", ").trim_matches([',', ' ']).into()),
            "TEL" if card.phones.len() < MAX_VALUES => {
                card.phones
                    .push(value.trim_start_matches("tel:").to_owned());
            }
            "EMAIL" if card.emails.len() < MAX_VALUES => card.emails.push(value),
            _ => {}
        }
    }
    if cards.is_empty() {
        return None;
    }
    let lines: Vec<String> = cards
        .iter()
        .take(MAX_VALUES)
        .flat_map(Card::lines)
        .collect();
    Some(lines.join("\n"))
}

#[derive(Default)]
struct Card {
    name: Option<String>,
    org: Option<String>,
    phones: Vec<String>,
    emails: Vec<String>,
}

impl Card {
    fn lines(&self) -> Vec<String> {
        let mut head = format!(
            "Contact card: {}",
            self.name.as_deref().unwrap_or("(no name)")
        );
        if let Some(org) = &self.org {
            head.push_str(&format!(" ({org})"));
        }
        let mut lines = vec![head];
        lines.extend(self.phones.iter().map(|p| format!("phone: {p}")));
        lines.extend(self.emails.iter().map(|e| format!("e-mail: {e}")));
        lines
    }
}

/// Joins folded lines (a line starting with a space or tab continues the one before).
fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.lines() {
        match (raw.strip_prefix([' ', '\t']), lines.last_mut()) {
            (Some(rest), Some(last)) => last.push_str(rest),
            _ => lines.push(raw.to_owned()),
        }
    }
    lines
}

fn unescape(value: &str) -> String {
    let v = value
        .replace("\\n", " ")
        .replace("\\N", " ")
        .replace("\\,", ",")
        .replace("\\;", ";")
        .replace("\\\\", "\\");
    v.chars().take(MAX_VALUE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_addresses() {
        let card = "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Silva;Ana;;;\r\nFN:Ana Silva\r\nORG:Acme\\, Inc.;\r\nTEL;TYPE=CELL:+44 20 7946 0000\r\nitem1.EMAIL;TYPE=INTERNET:ana@exa\r\n mple.com\r\nEND:VCARD\r\n";
        assert_eq!(
            summary(card).unwrap(),
            "Contact card: Ana Silva (Acme, Inc.)\nphone: +44 20 7946 0000\ne-mail: ana@example.com"
        );
    }

    #[test]
    fn a_name_from_n_and_several_cards() {
        let cards = "BEGIN:VCARD\nN:Doe;John\nTEL:1\nEND:VCARD\nBEGIN:VCARD\nTEL:2\nEND:VCARD";
        assert_eq!(
            summary(cards).unwrap(),
            "Contact card: John Doe\nphone: 1\nContact card: (no name)\nphone: 2"
        );
        assert_eq!(summary("not a card"), None);
    }
}
