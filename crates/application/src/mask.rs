//! Hiding secret values in job output.
//!
//! The values a job binds with `credentials('id')` reach its steps as
//! environment variables, and a step may print them. [`SecretMasker`]
//! replaces every occurrence of each value with [`MASK`] before a line is
//! stored, published or streamed. A value spanning several lines (a key
//! file) is also masked line by line, since output is cut into lines
//! before it is masked.
//!
//! [`split_lines`] cuts a step's output into lines as it arrives in chunks
//! of any size. An over-long line is cut into pieces, never through an
//! occurrence of a secret: it keeps back as many bytes as the longest
//! secret until it knows where each occurrence ends.

use std::borrow::Cow;
use std::fmt;

/// What a secret value is replaced with.
pub const MASK: &str = "****";

/// Replaces secret values with [`MASK`]; see the module documentation.
#[derive(Clone, Default)]
pub struct SecretMasker {
    /// Non-empty, distinct, longest first.
    needles: Vec<Vec<u8>>,
}

impl fmt::Debug for SecretMasker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretMasker({} values)", self.needles.len())
    }
}

impl SecretMasker {
    /// A masker of `secrets` (and of each line of a multi-line one); empty
    /// values are ignored.
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            needles.push(secret.as_bytes().to_vec());
            if secret.contains('\n') {
                needles.extend(
                    secret
                        .split('\n')
                        .map(|l| l.trim_end_matches('\r').as_bytes().to_vec()),
                );
            }
        }
        needles.retain(|n| !n.is_empty());
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        SecretMasker { needles }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The length in bytes of the longest secret (0 when empty).
    pub fn longest(&self) -> usize {
        self.needles.first().map_or(0, Vec::len)
    }

    /// Where secrets occur in `text`: sorted, merged byte ranges.
    fn spans(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for needle in &self.needles {
            if needle.len() > text.len() {
                continue;
            }
            let first = needle[0];
            for start in 0..=text.len() - needle.len() {
                if text[start] == first && text[start..].starts_with(needle) {
                    spans.push((start, start + needle.len()));
                }
            }
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// `text` with every occurrence of a secret replaced by [`MASK`]
    /// (overlapping occurrences become one mask).
    pub fn mask_bytes<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        if self.is_empty() {
            return Cow::Borrowed(text);
        }
        let spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in spans {
            out.extend_from_slice(&text[at..start]);
            out.extend_from_slice(MASK.as_bytes());
            at = end;
        }
        out.extend_from_slice(&text[at..]);
        Cow::Owned(out)
    }

    /// [`Self::mask_bytes`] for text.
    pub fn mask(&self, text: &str) -> String {
        match self.mask_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => text.to_owned(),
            Cow::Owned(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A position at or near `cut` where `text` may be cut without cutting
    /// through a secret: `cut` itself, or the start of the secret it falls
    /// in, or (for a secret at the very start) its end. Never 0 for a
    /// `cut` above 0.
    fn safe_cut(&self, text: &[u8], cut: usize) -> usize {
        for (start, end) in self.spans(text) {
            if start < cut && cut < end {
                return if start > 0 { start } else { end };
            }
        }
        cut
    }
}

/// Appends `data` to `buffer` (a step's unfinished output) and takes out
/// the lines it completes, without their newlines, masked. A line longer
/// than `max_line` bytes is cut into pieces of about that size (a piece
/// may end early, or run over by at most a secret's length, so that no
/// secret is cut); `max_line` of 0 is taken as 1.
pub fn split_lines(
    buffer: &mut Vec<u8>,
    data: &[u8],
    max_line: usize,
    masker: &SecretMasker,
) -> Vec<Vec<u8>> {
    buffer.extend_from_slice(data);
    take_lines(buffer, max_line, masker, false)
}

/// The lines left in `buffer` when its output has ended (the last one
/// without a newline), masked and cut as [`split_lines`] does; `buffer`
/// is left empty.
pub fn finish_lines(buffer: &mut Vec<u8>, max_line: usize, masker: &SecretMasker) -> Vec<Vec<u8>> {
    take_lines(buffer, max_line, masker, true)
}

fn take_lines(
    buffer: &mut Vec<u8>,
    max_line: usize,
    masker: &SecretMasker,
    last: bool,
) -> Vec<Vec<u8>> {
    let max_line = max_line.max(1);
    // Until more output comes, a secret may go on past the buffer's end.
    let hold = if last {
        0
    } else {
        masker.longest().saturating_sub(1)
    };
    let mut lines = Vec::new();
    let mut start = 0;
    loop {
        let rest = &buffer[start..];
        if let Some(end) = rest.iter().take(max_line + 1).position(|&b| b == b'\n') {
            lines.push(masker.mask_bytes(&rest[..end]).into_owned());
            start += end + 1;
        } else if rest.len() > max_line && rest.len() >= max_line + hold {
            // Every secret crossing `max_line` ends within the window.
            let window = if last { rest.len() } else { max_line + hold };
            let cut = masker.safe_cut(&rest[..window], max_line);
            lines.push(masker.mask_bytes(&rest[..cut]).into_owned());
            start += cut;
        } else {
            break;
        }
    }
    if last && start < buffer.len() {
        lines.push(masker.mask_bytes(&buffer[start..]).into_owned());
        start = buffer.len();
    }
    buffer.drain(..start);
    lines
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_occurrence_is_masked() {
        let check = |secrets: &[&str], text: &str, expected: &str| {
            assert_eq!(SecretMasker::new(secrets).mask(text), expected, "{text:?}");
        };
        check(
            &["s3cret"],
            "token=s3cret and s3cret",
            "token=**** and ****",
        );
        check(&["s3cret"], "nothing here", "nothing here");
        check(&["abc", "bcd"], "xabcdx", "x****x");
        check(&["aa"], "aaaaa", "****");
        check(&["", "k"], "kite", "****ite");
        check(&["line1\nline2"], "line1", "****");
        check(&["line1\r\nline2"], "a line2 b", "a **** b");
        check(&[], "plain", "plain");
        assert_eq!(
            format!("{:?}", SecretMasker::new(["s3cret"])),
            "SecretMasker(1 values)"
        );
    }

    #[test]
    fn long_lines_are_cut_but_never_through_a_secret() {
        let masker = SecretMasker::new(["SECRET"]);
        let mut buffer = Vec::new();
        // "xxSECRET": a cut at 4 falls in the secret; the piece ends before it.
        let lines = split_lines(&mut buffer, b"xxSECRETyyyy\nz", 4, &masker);
        assert_eq!(lines, [b"xx".to_vec(), b"****".to_vec(), b"yyyy".to_vec()]);
        assert_eq!(buffer, b"z");
        // A secret at the start of a piece is kept whole.
        let mut buffer = Vec::new();
        let lines = split_lines(&mut buffer, b"SECRETab", 3, &masker);
        assert_eq!(lines, [b"****".to_vec()]);
        assert_eq!(buffer, b"ab");
        // Without secrets, pieces are exactly max_line long.
        let mut buffer = Vec::new();
        let lines = split_lines(&mut buffer, b"abcdefg", 3, &SecretMasker::default());
        assert_eq!(lines, [b"abc".to_vec(), b"def".to_vec()]);
        assert_eq!(buffer, b"g");
    }

    fn secret() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[ab\n]{1,6}").unwrap()
    }

    proptest! {
        /// However the output is chunked and however long its lines, no
        /// line that comes out holds a secret (or a line of a multi-line
        /// one), and without secrets the lines are the input.
        #[test]
        fn no_secret_survives_any_chunking(
            secrets in proptest::collection::vec(secret(), 1..4),
            pieces in proptest::collection::vec((0usize..4, "[abc\n]{0,8}"), 0..24),
            cuts in proptest::collection::vec(1usize..16, 1..8),
            max_line in 1usize..12,
        ) {
            let masker = SecretMasker::new(&secrets);
            let mut text = Vec::new();
            for (which, noise) in &pieces {
                if let Some(secret) = secrets.get(*which) {
                    text.extend_from_slice(secret.as_bytes());
                }
                text.extend_from_slice(noise.as_bytes());
            }
            let mut buffer = Vec::new();
            let mut lines = Vec::new();
            let mut plain_buffer = Vec::new();
            let mut plain = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < text.len() {
                let end = (at + cuts[i % cuts.len()]).min(text.len());
                lines.extend(split_lines(&mut buffer, &text[at..end], max_line, &masker));
                plain.extend(split_lines(&mut plain_buffer, &text[at..end], max_line, &SecretMasker::default()));
                at = end;
                i += 1;
            }
            lines.extend(finish_lines(&mut buffer, max_line, &masker));
            plain.extend(finish_lines(&mut plain_buffer, max_line, &SecretMasker::default()));
            prop_assert!(buffer.is_empty() && plain_buffer.is_empty());
            for line in &lines {
                for needle in &masker.needles {
                    prop_assert!(
                        !line.windows(needle.len()).any(|w| w == needle.as_slice()),
                        "{:?} survives in {:?}", String::from_utf8_lossy(needle), String::from_utf8_lossy(line)
                    );
                }
            }
            for line in &plain {
                prop_assert!(line.len() <= max_line && !line.contains(&b'\n'));
            }
            let rejoined: Vec<u8> = plain.join(&b"\n"[..]);
            // Pieces of a cut line were joined by a newline that was not there.
            let cut_free: Vec<u8> = text.clone();
            prop_assert_eq!(
                rejoined.iter().filter(|&&b| b != b'\n').collect::<Vec<_>>(),
                cut_free.iter().filter(|&&b| b != b'\n').collect::<Vec<_>>()
            );
        }
    }
}
