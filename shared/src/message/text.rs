//! Splitting long texts for channels with a length limit (Connect: 1024 characters per
//! message, Twilio: 1600).

/// Splits `text` into parts of at most `max` characters, in order, preferring to cut at
/// whitespace near the end of a part so words stay whole. An empty text has no parts.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + max).min(chars.len());
        if end < chars.len()
            && let Some(space) = (start + max * 3 / 4..end)
                .rev()
                .find(|&i| chars[i].is_whitespace())
        {
            end = space + 1;
        }
        parts.push(chars[start..end].iter().collect());
        start = end;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_split_in_order_within_the_limit() {
        let text: String = (0..700).map(|i| format!("w{i} ")).collect();
        let parts = split(&text, 1024);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.chars().count() <= 1024));
        assert_eq!(parts.concat(), text);
        assert!(parts[0].ends_with(' '), "cut mid-word");
        let unbroken = "x".repeat(2500);
        let parts = split(&unbroken, 1024);
        assert_eq!(
            parts.iter().map(String::len).collect::<Vec<_>>(),
            [1024, 1024, 452]
        );
        assert_eq!(split("short", 1024), ["short"]);
        let emoji = "😀".repeat(1500);
        assert!(
            split(&emoji, 1024)
                .iter()
                .all(|p| p.chars().count() <= 1024)
        );
    }
}
