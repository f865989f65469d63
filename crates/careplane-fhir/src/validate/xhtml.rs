//! Narrative XHTML rules (R4 narrative.html): a `div` root in the XHTML namespace, only the
//! allowed basic-HTML elements, no scripts, forms, frames, objects or event attributes.

use super::Walker;
use crate::outcome::IssueCode;

const ALLOWED: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
    "s",
    "u",
    "strike",
    "font",
    "center",
    "del",
    "ins",
    "figure",
    "figcaption",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "mark",
    "time",
    "wbr",
    "label",
];

pub(super) fn check(w: &mut Walker<'_>, text: &str, path: &str) {
    let trimmed = text.trim();
    if !trimmed.starts_with("<div") || !trimmed.ends_with("</div>") {
        w.report(
            IssueCode::Value,
            path,
            "Narrative must be a single XHTML <div> element",
        );
        return;
    }
    let head_end = trimmed.find('>').unwrap_or(trimmed.len());
    if !trimmed[..head_end].contains("http://www.w3.org/1999/xhtml") {
        w.report(
            IssueCode::Value,
            path,
            "The narrative <div> must declare the XHTML namespace",
        );
    }
    let lower = trimmed.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(pos) = rest.find('<') {
        rest = &rest[pos + 1..];
        if rest.starts_with('/') || rest.starts_with('!') || rest.starts_with('?') {
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        if !ALLOWED.contains(&name) {
            w.report(
                IssueCode::Value,
                path,
                format!("The element <{name}> is not allowed in a narrative"),
            );
            continue;
        }
        let tag_end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[name_len..tag_end];
        if has_event_attribute(tag) || tag.contains("javascript:") {
            w.report(
                IssueCode::Value,
                path,
                format!("Active content (event handler or script URL) in <{name}>"),
            );
        }
    }
}

fn has_event_attribute(tag: &str) -> bool {
    tag.split(|c: char| c.is_whitespace()).any(|attr| {
        attr.starts_with("on")
            && attr
                .split('=')
                .next()
                .is_some_and(|n| n.len() > 2 && n.chars().all(|c| c.is_ascii_alphabetic()))
            && attr.contains('=')
    })
}
