//! Connect's `text/markdown` (agents and flows may send it once the chat declares it) in
//! WhatsApp's formatting: `*bold*`, `_italic_`, `~strike~`, `` `code` `` and ```` ``` ````
//! blocks, `> quotes`, `• ` and `1. ` lists; a link becomes its text and its address, a
//! heading a bold line. pulldown-cmark reads the Markdown (CommonMark with GitHub's
//! strikethrough), so whatever an agent's editor produces is read as it renders there.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

pub fn to_whatsapp(markdown: &str) -> String {
    let mut out = String::new();
    // Ordered lists' next numbers, innermost last; `None` for a bulleted list.
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut links: Vec<String> = Vec::new();
    // Where each open link's text starts in `out`, to tell whether it shows its address.
    let mut link_text_at: Vec<usize> = Vec::new();
    let mut quote_depth = 0usize;
    for event in Parser::new_ext(markdown, Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Strong => out.push('*'),
                Tag::Emphasis => out.push('_'),
                Tag::Strikethrough => out.push('~'),
                Tag::Heading { .. } => out.push('*'),
                // WhatsApp shows no language: a fence's info string is dropped.
                Tag::CodeBlock(_) => out.push_str("```"),
                Tag::BlockQuote(_) => quote_depth += 1,
                Tag::List(first) => lists.push(first),
                Tag::Item => {
                    let depth = lists.len().saturating_sub(1);
                    out.push_str(&"   ".repeat(depth));
                    match lists.last_mut() {
                        Some(Some(n)) => {
                            out.push_str(&format!("{n}. "));
                            *n += 1;
                        }
                        _ => out.push_str("• "),
                    }
                }
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    links.push(dest_url.to_string());
                    link_text_at.push(out.len());
                }
                Tag::Paragraph if quote_depth > 0 => out.push_str(&"> ".repeat(quote_depth)),
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Strong => out.push('*'),
                TagEnd::Emphasis => out.push('_'),
                TagEnd::Strikethrough => out.push('~'),
                TagEnd::Heading(_) => out.push_str("*\n\n"),
                TagEnd::CodeBlock => {
                    if out.ends_with('\n') {
                        out.pop();
                    }
                    out.push_str("```\n\n");
                }
                TagEnd::BlockQuote(_) => quote_depth = quote_depth.saturating_sub(1),
                TagEnd::List(_) => {
                    lists.pop();
                    if lists.is_empty() {
                        out.push('\n');
                    }
                }
                TagEnd::Item if !out.ends_with('\n') => out.push('\n'),
                TagEnd::Link | TagEnd::Image => {
                    let url = links.pop().unwrap_or_default();
                    let at = link_text_at.pop().unwrap_or(out.len());
                    let text = out[at..].to_owned();
                    if text.is_empty() {
                        out.push_str(&url);
                    } else if text != url && !url.is_empty() {
                        out.push_str(&format!(" ({url})"));
                    }
                }
                // Inside a list item a paragraph is the item's line.
                TagEnd::Paragraph if lists.is_empty() => out.push_str("\n\n"),
                TagEnd::Paragraph => out.push('\n'),
                _ => {}
            },
            Event::Text(t) => {
                if quote_depth > 0 && out.ends_with('\n') {
                    out.push_str(&"> ".repeat(quote_depth));
                }
                out.push_str(&t);
            }
            Event::Code(c) => {
                out.push('`');
                out.push_str(&c);
                out.push('`');
            }
            Event::SoftBreak | Event::HardBreak => {
                out.push('\n');
                if quote_depth > 0 {
                    out.push_str(&"> ".repeat(quote_depth));
                }
            }
            Event::Rule => out.push_str("———\n\n"),
            Event::Html(h) | Event::InlineHtml(h) => out.push_str(&h),
            _ => {}
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::to_whatsapp;

    #[test]
    fn emphasis_maps_to_whatsapp_marks() {
        assert_eq!(
            to_whatsapp("**Order** is *late*, ~~cancelled~~ `#1042`"),
            "*Order* is _late_, ~cancelled~ `#1042`"
        );
        assert_eq!(to_whatsapp("__bold__ and _it_"), "*bold* and _it_");
    }

    #[test]
    fn blocks_lists_links_and_headings() {
        let md = "# Your refund\n\nSteps:\n\n1. Print the label\n2. Drop it off\n\n- fast\n- free\n\nSee [the policy](https://example.com/p) or https://example.com/q.\n\n```\nREF-1\n```";
        assert_eq!(
            to_whatsapp(md),
            "*Your refund*\n\nSteps:\n\n1. Print the label\n2. Drop it off\n\n• fast\n• free\n\nSee the policy (https://example.com/p) or https://example.com/q.\n\n```REF-1```"
        );
    }

    #[test]
    fn quotes_and_plain_text_pass() {
        assert_eq!(to_whatsapp("> as you said\n\nok"), "> as you said\n\nok");
        assert_eq!(
            to_whatsapp("just text\nsecond line"),
            "just text\nsecond line"
        );
    }
}
