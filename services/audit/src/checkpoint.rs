//! A log's checkpoint (C2SP `tlog-checkpoint`): the text a log signs to commit to its tree, its
//! origin (the log's unique name), its size and its root hash (base64), each on its own line,
//! then any extension lines. Signed as a note ([`crate::note`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::merkle::Hash;
use crate::note::NoteError;

/// A checkpoint's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (`tributary.example/ten_…`), which no other log shares.
    pub origin: String,
    /// How many entries the tree has.
    pub size: u64,
    /// The tree's root.
    pub root: Hash,
    /// Extension lines (the time it was made, for one), in order.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The text signed.
    pub fn to_text(&self) -> String {
        let mut text = format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root));
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Reads a checkpoint's text (of a note already opened, so its signatures are checked).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let body = text.strip_suffix('\n').ok_or(NoteError::Malformed("a checkpoint ends in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(NoteError::Malformed("no origin"))?;
        let size = lines.next().ok_or(NoteError::Malformed("no tree size"))?;
        // Decimal without leading zeros (or a sign): one text per size.
        if size.is_empty()
            || (size.len() > 1 && size.starts_with('0'))
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NoteError::Malformed("the tree size is not a decimal number"));
        }
        let size = size.parse().map_err(|_| NoteError::Malformed("the tree size is too large"))?;
        let root = lines.next().ok_or(NoteError::Malformed("no root hash"))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(NoteError::Malformed("the root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(NoteError::Malformed("an empty extension line"));
        }
        Ok(Self { origin: origin.to_owned(), size, root, extensions })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::merkle::{Frontier, leaf_hash};
    use crate::note::{NoteSigner, NoteVerifier, open, sign};

    #[test]
    fn a_signed_checkpoint_reads_back_and_commits_to_its_tree() {
        let mut tree = Frontier::new();
        for n in 0..5u8 {
            tree.push(leaf_hash(&[n]));
        }
        let checkpoint = Checkpoint {
            origin: "tributary.example/ten_01".into(),
            size: tree.size(),
            root: tree.root(),
            extensions: vec!["time 1796680000".into()],
        };
        let text = checkpoint.to_text();
        assert!(text.starts_with("tributary.example/ten_01\n5\n"), "{text}");
        let log = NoteSigner::from_seed("tributary.example/ten_01", &[9; 32]).unwrap();
        let note = sign(&text, &[&log]).unwrap();
        let opened = open(&note, &[NoteVerifier::parse(&log.verifier_key()).unwrap()]).unwrap();
        assert_eq!(Checkpoint::parse(&opened.text).unwrap(), checkpoint);
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        let root = STANDARD.encode([0u8; 32]);
        for bad in [
            format!("origin\n5\n{root}"),
            format!("\n5\n{root}\n"),
            format!("origin\n05\n{root}\n"),
            format!("origin\n-5\n{root}\n"),
            "origin\n5\nAAAA\n".to_owned(),
            format!("origin\n5\n{root}\n\n"),
            "origin\n5\n".to_owned(),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
