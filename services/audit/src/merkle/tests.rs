//! The tree against known roots (the leaf inputs and roots of transparency-dev/merkle's test
//! data, RFC 6962/9162 hashing), and every proof of trees up to 40 leaves made, checked and
//! tampered with.
#![allow(clippy::unwrap_used)]

use super::*;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn hash(text: &str) -> Hash {
    hex(text).try_into().unwrap()
}

const INPUTS: [&str; 8] =
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn vector_leaves() -> Vec<Hash> {
    INPUTS.iter().map(|input| leaf_hash(&hex(input))).collect()
}

fn leaves(n: usize) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
}

/// `hashes` with one bit of hash `at` flipped.
fn flipped(hashes: &[Hash], at: usize) -> Vec<Hash> {
    let mut changed = hashes.to_vec();
    changed[at][at % 32] ^= 1;
    changed
}

#[test]
fn roots_are_those_of_the_reference_vectors() {
    let leaves = vector_leaves();
    for (size, expected) in ROOTS.iter().enumerate() {
        assert_eq!(root(&leaves[..size]), hash(expected), "size {size}");
    }
    assert_eq!(empty_root(), hash(ROOTS[0]));
}

#[test]
fn a_frontier_gives_the_trees_root_after_every_append() {
    let all = leaves(100);
    let mut frontier = Frontier::new();
    assert_eq!(frontier.root(), empty_root());
    for (n, leaf) in all.iter().enumerate() {
        frontier.push(*leaf);
        assert_eq!((frontier.size(), frontier.root()), (n as u64 + 1, root(&all[..=n])), "size {}", n + 1);
    }
    let mut vectors = Frontier::new();
    for leaf in vector_leaves() {
        vectors.push(leaf);
    }
    assert_eq!(vectors.root(), hash(ROOTS[8]));
}

#[test]
fn every_inclusion_proof_verifies_and_any_change_to_it_fails() {
    for n in 1..=40usize {
        let all = leaves(n);
        let tree = root(&all);
        let size = n as u64;
        for i in 0..n {
            let proof = inclusion_proof(&all, i).unwrap();
            let index = i as u64;
            assert_eq!(verify_inclusion(&all[i], index, size, &proof, &tree), Ok(()), "{i} of {n}");
            for at in 0..proof.len() {
                assert!(verify_inclusion(&all[i], index, size, &flipped(&proof, at), &tree).is_err());
            }
            if n > 1 {
                let other = (i + 1) % n;
                assert!(verify_inclusion(&all[other], index, size, &proof, &tree).is_err(), "another leaf");
                assert!(
                    verify_inclusion(&all[i], other as u64, size, &proof, &tree).is_err(),
                    "another index"
                );
                assert!(verify_inclusion(&all[i], index, size, &proof[..proof.len() - 1], &tree).is_err());
            }
            let mut longer = proof.clone();
            longer.push(tree);
            assert!(verify_inclusion(&all[i], index, size, &longer, &tree).is_err(), "a hash too many");
        }
        assert!(inclusion_proof(&all, n).is_none());
        assert_eq!(
            verify_inclusion(&all[0], size, size, &[], &tree),
            Err(ProofError::OutOfRange { index: size, size })
        );
    }
}

#[test]
fn every_consistency_proof_verifies_and_any_change_to_it_fails() {
    for n in 1..=40usize {
        let all = leaves(n);
        let new_root = root(&all);
        for m in 0..=n {
            let old_root = root(&all[..m]);
            let proof = consistency_proof(&all, m).unwrap();
            let (old, new) = (m as u64, n as u64);
            assert_eq!(verify_consistency(old, new, &old_root, &new_root, &proof), Ok(()), "{m} to {n}");
            for at in 0..proof.len() {
                assert!(verify_consistency(old, new, &old_root, &new_root, &flipped(&proof, at)).is_err());
            }
            if m > 0 && m < n {
                // A fork: the old tree's last entry changed.
                let mut forked = all[..m].to_vec();
                forked[m - 1] = leaf_hash(b"rewritten");
                assert!(
                    verify_consistency(old, new, &root(&forked), &new_root, &proof).is_err(),
                    "{m} to {n}"
                );
                assert!(verify_consistency(old, new, &old_root, &root(&leaves(n + 1)), &proof).is_err());
                assert!(verify_consistency(old, new, &old_root, &new_root, &proof[1..]).is_err());
            }
        }
        assert!(consistency_proof(&all, n + 1).is_none());
    }
    let all = leaves(8);
    assert!(verify_consistency(5, 4, &root(&all[..5]), &root(&all[..4]), &[]).is_err());
    assert!(
        verify_consistency(4, 4, &root(&all[..4]), &root(&all[..5]), &[]).is_err(),
        "same size, other root"
    );
}

#[test]
fn proof_spans_folded_from_whole_subtrees_give_the_proofs() {
    // How a log without its leaves in memory builds proofs: each span's root folded from the
    // roots of the whole subtrees it is made of.
    let all = leaves(70);
    let span_root = |span: &Span| {
        let parts: Vec<Hash> = whole_subtrees(span)
            .into_iter()
            .map(|(start, height)| root(&all[start as usize..(start + (1 << height)) as usize]))
            .collect();
        fold_right(&parts)
    };
    for size in 1..=all.len() {
        for index in 0..size {
            let spans = inclusion_spans(index as u64, size as u64).unwrap();
            let folded: Vec<Hash> = spans.iter().map(span_root).collect();
            assert_eq!(Some(folded), inclusion_proof(&all[..size], index), "inclusion {index} of {size}");
        }
        for old in 0..=size {
            let spans = consistency_spans(old as u64, size as u64).unwrap();
            let folded: Vec<Hash> = spans.iter().map(span_root).collect();
            assert_eq!(Some(folded), consistency_proof(&all[..size], old), "consistency {old} to {size}");
        }
    }
    assert_eq!(inclusion_spans(5, 5), None);
    assert_eq!(consistency_spans(6, 5), None);
}

#[test]
fn a_frontier_reports_each_subtree_it_completes_and_survives_its_bytes() {
    let all = leaves(300);
    let mut frontier = Frontier::new();
    let mut reported = Vec::new();
    for leaf in &all {
        frontier.push_reporting(*leaf, |height, index, hash| reported.push((height, index, *hash)));
        let copy = Frontier::from_bytes(&frontier.to_bytes()).unwrap();
        assert_eq!(copy, frontier);
    }
    // Every whole subtree of height 1 to 8 within 300 leaves, once, with its root.
    let expected: usize = (1..=8).map(|h| 300 >> h).sum();
    assert_eq!(reported.len(), expected);
    for (height, index, hash) in reported {
        let start = (index << height) as usize;
        assert_eq!(hash, root(&all[start..start + (1 << height)]), "height {height} index {index}");
    }
    assert_eq!(Frontier::from_bytes(&[0; 7]), None);
    assert_eq!(Frontier::from_bytes(&3u64.to_be_bytes()), None, "a size of 3 needs two nodes");
}
