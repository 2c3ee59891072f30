//! `--expect-framemd5`: decode correctness end to end. `--verify` proves that the bytes the
//! producer published are the bytes this process read (transport integrity); it cannot see a
//! picture the producer decoded wrongly, because the producer's checksum is taken over what it
//! decoded. This check compares every frame with an independent reference: the MD5 of its
//! visible bytes, packed plane after plane as `--dump-raw` writes them (FFmpeg's `rawvideo`
//! layout), against a file written by the FFmpeg CLI's `framemd5` muxer
//! (<https://ffmpeg.org/ffmpeg-formats.html#framemd5>), e.g.
//!
//! ```text
//! ffmpeg -i IN -map 0:v:0 -autoscale 0 -fps_mode passthrough -pix_fmt yuv420p -f framemd5 REF
//! ```
//!
//! Frame `seq` is compared with the reference's frame `seq` (modulo its length, for `--loop`).

use anyhow::{bail, Context as _, Result};
use md5::{Digest, Md5};
use std::path::Path;

/// The reference hashes and what was found.
pub struct Expect {
    hashes: Vec<[u8; 16]>,
    pub matched: u64,
    pub mismatched: u64,
}

impl Expect {
    /// Read a framemd5 file: `#` comments, then `stream, dts, pts, duration, size, hash` lines;
    /// stream 0's lines are the frames.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut hashes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let parsed = (fields.len() == 6)
                .then(|| hex16(fields[5]))
                .flatten()
                .filter(|_| fields[0].parse::<u32>().is_ok());
            let Some(hash) = parsed else {
                bail!(
                    "{}:{}: not a framemd5 line (stream, dts, pts, duration, size, md5): {line:?}",
                    path.display(),
                    n + 1
                );
            };
            if fields[0] == "0" {
                hashes.push(hash);
            }
        }
        if hashes.is_empty() {
            bail!("{}: no frames of stream 0", path.display());
        }
        Ok(Self {
            hashes,
            matched: 0,
            mismatched: 0,
        })
    }

    /// Compare frame `seq`'s packed visible bytes with the reference; false on a mismatch.
    pub fn check(&mut self, seq: u64, packed: &[u8]) -> bool {
        let want = self.hashes[(seq % self.hashes.len() as u64) as usize];
        let got: [u8; 16] = Md5::digest(packed).into();
        if got == want {
            self.matched += 1;
            true
        } else {
            self.mismatched += 1;
            if self.mismatched <= 5 {
                tracing::error!(
                    "frame {seq}: MD5 {} differs from the reference's {}",
                    hex(&got),
                    hex(&want)
                );
            }
            false
        }
    }
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ffmpeg_framemd5_and_checks_frames() {
        let dir = std::env::temp_dir().join(format!("framemd5-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ref.framemd5");
        // MD5("") and MD5("a").
        std::fs::write(
            &p,
            "#format: frame checksums\n#tb 0: 1/30\n\
             0,          0,          0,        1,        0, d41d8cd98f00b204e9800998ecf8427e\n\
             1,          0,          0,        1,        4, 00000000000000000000000000000000\n\
             0,          1,          1,        1,        1, 0cc175b9c0f1b6a831c399e269772661\n",
        )
        .unwrap();
        let mut e = Expect::load(&p).unwrap();
        assert!(e.check(0, b""));
        assert!(e.check(1, b"a"));
        assert!(!e.check(2, b"a"), "frame 2 is frame 0 again (a loop)");
        assert_eq!((e.matched, e.mismatched), (2, 1));
        std::fs::write(&p, "0, 0, 0, 1, 1, nothex\n").unwrap();
        let err = format!("{:#}", Expect::load(&p).err().unwrap());
        assert!(err.contains("not a framemd5 line"), "{err}");
        std::fs::write(&p, "#only comments\n").unwrap();
        assert!(Expect::load(&p).is_err());
    }
}
