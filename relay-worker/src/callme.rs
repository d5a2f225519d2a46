//! Whether a customer's text asks to be called back ("call me"), which places a billable
//! outbound call: matched on whole words, never inside other words ("recall meeting",
//! "call Mei") and never when the request is negated ("don't call me").

/// Words that, among the few just before a phrase, turn it into a refusal.
const NEGATIONS: &[&str] = &[
    "no", "not", "dont", "never", "stop", "without", "didnt", "doesnt", "wont", "cant", "cannot",
    "shouldnt", "neednt", "nobody",
];
/// How many words before a phrase are searched for a negation ("please do not call me").
const NEGATION_REACH: usize = 3;
/// Only the start of a long text is read; Twilio bodies are at most 1600 characters.
const MAX_CHARS: usize = 4096;

/// The configured phrases, each a sequence of lower-case words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phrases(Vec<Phrase>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Phrase {
    words: Vec<String>,
    /// The words run together, as people type them too ("callme").
    joined: String,
}

impl Phrases {
    /// Comma-separated phrases; case, punctuation and spacing do not matter.
    pub fn parse(list: &str) -> Self {
        Self(
            list.split(',')
                .map(words)
                .filter(|w| !w.is_empty())
                .map(|words| Phrase {
                    joined: words.concat(),
                    words,
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `text` holds one of the phrases as whole words (or run together as one
    /// word), not negated.
    pub fn requested(&self, text: &str) -> bool {
        let cut: String = text.chars().take(MAX_CHARS).collect();
        let text = words(&cut);
        self.0.iter().any(|phrase| {
            (0..text.len())
                .filter(|&at| text[at..].starts_with(&phrase.words) || text[at] == phrase.joined)
                .any(|at| {
                    let before = &text[at.saturating_sub(NEGATION_REACH)..at];
                    !before.iter().any(|w| NEGATIONS.contains(&w.as_str()))
                })
        })
    }
}

/// Lower-case words: runs of letters and digits. Apostrophes inside a word are dropped
/// ("don't" → "dont"); every other character separates words ("call-me" → call, me).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if matches!(c, '\'' | '\u{2019}') && !word.is_empty() {
            // Inside a word: skip it.
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_and_phrases_match_whatever_the_case_and_punctuation() {
        let p = Phrases::parse("Call Me, ring  me,callback");
        for yes in [
            "call me",
            "Please CALL ME!",
            "call-me",
            "can you call me?",
            "call me.please",
            "Ring me when you can",
            "callback please",
            "CallBack",
            "callme",
        ] {
            assert!(p.requested(yes), "{yes:?} should ask for a call");
        }
    }

    #[test]
    fn words_inside_others_and_negated_requests_do_not_match() {
        let p = Phrases::parse("call me, callback");
        for no in [
            "I will recall meeting notes",
            "Don't call me, just text",
            "don’t call me",
            "please do not call me",
            "never call me again",
            "I'll call Mei tomorrow",
            "callmeback",
            "no callback needed",
            "recall me",
            "",
        ] {
            assert!(!p.requested(no), "{no:?} should not ask for a call");
        }
    }

    #[test]
    fn a_negation_far_before_does_not_cancel_a_later_request() {
        let p = Phrases::parse("call me");
        assert!(p.requested("No worries at all, please call me"));
    }

    #[test]
    fn empty_lists_match_nothing() {
        let p = Phrases::parse(" , ,");
        assert!(p.is_empty());
        assert!(!p.requested("call me"));
    }
}
