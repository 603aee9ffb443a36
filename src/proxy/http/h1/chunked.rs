//! Finds where a chunked body ends without decoding it, sans-IO: the bytes pass through as
//! they came (no re-framing), and the scanner only says how many of them belong to the body.
//! Strict: CRLF line ends, hex sizes of at most 15 digits, bounded extensions and trailers,
//! so what the server or the client is handed is what the scanner judged.

/// Longest chunk extension, and all trailer fields together.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the size's hex digits (`digits` so far).
    Size {
        digits: u8,
    },
    /// Whitespace or `;extension` after the size, up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("bad chunk size")]
    Size,
    #[error("chunk extension too long")]
    Extension,
    #[error("missing CRLF in chunked framing")]
    LineEnd,
    #[error("trailer fields too long")]
    Trailers,
}

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Bytes of the current chunk still to come (Data), or the size being read (Size).
    left: u64,
    /// Bytes of extension or trailers seen (bounded).
    extra: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: State::Size { digits: 0 }, left: 0, extra: 0 }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `data`; returns how many bytes belong to the body (all of them unless it ended
    /// inside `data`).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = (data.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    i += take;
                    self.left -= take as u64;
                    if self.left == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size { digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => {
                        self.left = self.left * 16 + u64::from(d);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    Some(_) => return Err(ChunkError::Size),
                    None if digits == 0 => return Err(ChunkError::Size),
                    None if b == b'\r' => self.state = State::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.extra = 0;
                        self.state = State::Extension;
                    }
                    None => return Err(ChunkError::Size),
                },
                State::Extension => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' || b == 0 {
                        return Err(ChunkError::LineEnd);
                    } else {
                        self.extra += 1;
                        if self.extra > MAX_EXTENSION {
                            return Err(ChunkError::Extension);
                        }
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    if self.left == 0 {
                        self.extra = 0;
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' { State::EndLf } else { State::TrailerLine };
                    if b != b'\r' {
                        continue;
                    }
                }
                State::TrailerLine => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::LineEnd);
                    } else {
                        self.extra += 1;
                        if self.extra > MAX_TRAILERS {
                            return Err(ChunkError::Trailers);
                        }
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnd);
                    }
                    self.state = State::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_whole(data: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::default();
        let n = c.feed(data)?;
        Ok((n, c.is_done()))
    }

    #[test]
    fn bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n1a;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        assert_eq!(scan_whole(body), Ok((body.len(), true)));
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(scan_whole(&with_next), Ok((body.len(), true)));
        let trailers = b"0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n";
        assert_eq!(scan_whole(trailers), Ok((trailers.len(), true)));
        assert_eq!(scan_whole(b"5\r\nhel"), Ok((6, false)));
    }

    #[test]
    fn bad_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\nX: 1\n\r\n",
            b"-1\r\n",
            b"5;a\nb\r\n",
        ] {
            assert!(scan_whole(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_EXTENSION + 1));
        assert_eq!(scan_whole(&long), Err(ChunkError::Extension));
    }

    proptest::proptest! {
        /// Any split of a valid body gives the same end as scanning it whole.
        #[test]
        fn splits_agree(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..50), 0..6),
            cut in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\nNEXT");
            let end = body.len() - 4;
            let mut cuts: Vec<usize> = cut.into_iter().map(|c| c % body.len()).collect();
            cuts.sort_unstable();
            let mut s = Chunked::default();
            let (mut at, mut consumed) = (0, 0);
            for c in cuts.into_iter().chain(std::iter::once(body.len())) {
                if c < at { continue; }
                consumed += s.feed(&body[at..c]).unwrap();
                at = c;
                if s.is_done() { break; }
            }
            proptest::prop_assert!(s.is_done());
            proptest::prop_assert_eq!(consumed, end);
        }

        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut s = Chunked::default();
            if let Ok(n) = s.feed(&data) {
                proptest::prop_assert!(n <= data.len());
            }
        }
    }
}
