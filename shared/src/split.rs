//! Splitting a long reply into channel-sized messages, preferring paragraph, then sentence,
//! then word boundaries, and cutting inside a word only when a single word is too long.
//! WhatsApp counts characters (≤ 4096), Instagram UTF-8 bytes (≤ 1000).

/// How a channel measures text length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Chars,
    Bytes,
}

impl Measure {
    fn len(self, s: &str) -> usize {
        match self {
            Measure::Chars => s.chars().count(),
            Measure::Bytes => s.len(),
        }
    }
}

/// WhatsApp text body limit, in characters.
pub const WHATSAPP_MAX_CHARS: usize = 4096;
/// Instagram text limit, in UTF-8 bytes.
pub const INSTAGRAM_MAX_BYTES: usize = 1000;

/// `text` in the parts `channel` accepts: Instagram counts UTF-8 bytes (1000), WhatsApp and
/// web chat characters (4096).
pub fn split_for(channel: crate::envelope::Channel, text: &str) -> Vec<String> {
    match channel {
        crate::envelope::Channel::Instagram => {
            split_text(text, INSTAGRAM_MAX_BYTES, Measure::Bytes)
        }
        _ => split_text(text, WHATSAPP_MAX_CHARS, Measure::Chars),
    }
}

/// Splits `text` into pieces of at most `max` (in `measure` units), in order. Whitespace at a
/// cut is dropped; nothing else is lost. Empty input gives no pieces.
pub fn split_text(text: &str, max: usize, measure: Measure) -> Vec<String> {
    assert!(max >= 4, "limit too small to split into");
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if measure.len(rest) <= max {
            out.push(rest.to_owned());
            break;
        }
        let window_end = prefix_end(rest, max, measure);
        let window = &rest[..window_end];
        let cut = best_cut(window).unwrap_or(window_end);
        let (piece, tail) = rest.split_at(cut);
        let piece = piece.trim_end();
        if !piece.is_empty() {
            out.push(piece.to_owned());
        }
        rest = tail.trim_start();
    }
    out
}

/// Byte index of the longest prefix of `s` within `max` units, on a char boundary.
fn prefix_end(s: &str, max: usize, measure: Measure) -> usize {
    match measure {
        Measure::Chars => s.char_indices().nth(max).map_or(s.len(), |(i, _)| i),
        Measure::Bytes => {
            let mut end = max.min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            end
        }
    }
}

/// The last good place to cut inside `window` (a byte index just after the boundary), looking
/// only at the second half so pieces do not get tiny.
fn best_cut(window: &str) -> Option<usize> {
    let min = window.len() / 2;
    let after = |pat: &str| {
        window
            .rmatch_indices(pat)
            .map(|(i, m)| i + m.len())
            .find(|&i| i >= min)
    };
    after("\n\n")
        .or_else(|| {
            [". ", "! ", "? ", "。", "\n", "; "]
                .iter()
                .filter_map(|p| after(p))
                .max()
        })
        .or_else(|| after(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn short_text_is_one_piece_and_empty_is_none() {
        assert_eq!(split_text("hola", 4096, Measure::Chars), ["hola"]);
        assert!(split_text("  \n ", 4096, Measure::Chars).is_empty());
    }

    #[test]
    fn a_10000_char_reply_splits_in_order_on_paragraphs() {
        let para = |n: usize| {
            format!(
                "Paragraph {n}. {}",
                "lorem ipsum dolor sit amet ".repeat(60)
            )
        };
        let text: String = (0..6).map(para).collect::<Vec<_>>().join("\n\n");
        assert!(text.chars().count() > 9000);
        let parts = split_text(&text, WHATSAPP_MAX_CHARS, Measure::Chars);
        assert!(parts.len() >= 3);
        assert!(parts
            .iter()
            .all(|p| p.chars().count() <= WHATSAPP_MAX_CHARS));
        // Nothing lost, nothing reordered.
        assert_eq!(words(&parts.join(" ")), words(&text));
        // Cuts fall between paragraphs.
        assert!(
            parts.iter().all(|p| p.ends_with("amet")),
            "every piece ends a paragraph"
        );
        assert!(parts[1].starts_with("Paragraph"));
    }

    #[test]
    fn falls_back_to_sentences_then_words_then_hard_cuts() {
        let sentences = "Uno dos tres. ".repeat(100);
        let parts = split_text(&sentences, 100, Measure::Chars);
        assert!(parts
            .iter()
            .all(|p| p.ends_with('.') && p.chars().count() <= 100));
        let one_word = "x".repeat(250);
        let parts = split_text(&one_word, 100, Measure::Chars);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
    }

    #[test]
    fn instagram_counts_bytes_and_never_splits_a_character() {
        let text = "¿Cuánto cuesta el depa de dos recámaras? ".repeat(60); // multi-byte chars
        let parts = split_text(&text, INSTAGRAM_MAX_BYTES, Measure::Bytes);
        assert!(parts.len() >= 3);
        assert!(parts.iter().all(|p| p.len() <= INSTAGRAM_MAX_BYTES));
        assert_eq!(words(&parts.join(" ")), words(&text));
        let emoji = "😀".repeat(300); // 4 bytes each, no spaces
        let parts = split_text(&emoji, INSTAGRAM_MAX_BYTES, Measure::Bytes);
        assert!(parts
            .iter()
            .all(|p| p.len() <= INSTAGRAM_MAX_BYTES && p.len() % 4 == 0));
        assert_eq!(parts.concat(), emoji);
    }
}
