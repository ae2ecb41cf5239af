//! One small sort for the component. Each use of the standard library's
//! sorts instantiates several kilobytes of code (24 KB for five call
//! sites); the lists sorted here are short (the tags of one line, segment
//! ids, failed line numbers), so a heapsort is plenty and keeps the
//! component small.

/// Sort `v` in place by `less`: unstable, O(n log n), no allocation.
/// Callers that need stability break ties themselves (by position).
pub fn sort_by<T>(v: &mut [T], mut less: impl FnMut(&T, &T) -> bool) {
    let mut sift_down = |v: &mut [T], mut root: usize| loop {
        let mut child = 2 * root + 1;
        if child >= v.len() {
            return;
        }
        if child + 1 < v.len() && less(&v[child], &v[child + 1]) {
            child += 1;
        }
        if !less(&v[root], &v[child]) {
            return;
        }
        v.swap(root, child);
        root = child;
    };
    for root in (0..v.len() / 2).rev() {
        sift_down(v, root);
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift_down(&mut v[..end], 0);
    }
}

/// `sort_by` in ascending order of `Ord`.
pub fn sort<T: Ord>(v: &mut [T]) {
    sort_by(v, |a, b| a < b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sorts_like_std(mut v in proptest::collection::vec(0u16..50, 0..300)) {
            let mut want = v.clone();
            want.sort();
            sort(&mut v);
            prop_assert_eq!(v, want);
        }

        #[test]
        fn ties_broken_by_position_make_it_stable(keys in proptest::collection::vec(0u8..5, 0..200)) {
            let mut v: Vec<(u8, usize)> = keys.iter().copied().zip(0..).collect();
            let mut want = v.clone();
            want.sort_by_key(|x| x.0);
            sort_by(&mut v, |a, b| (a.0, a.1) < (b.0, b.1));
            prop_assert_eq!(v, want);
        }
    }
}
