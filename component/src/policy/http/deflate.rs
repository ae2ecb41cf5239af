//! Raw DEFLATE (RFC 1951) made for line protocol bodies.
//!
//! Instead of searching hash chains for matches, each line is diffed
//! against one earlier line, token by token: the newest line of the same
//! series (the bytes before the first space), else the line before it.
//! Keys, tags and shared value prefixes come out as matches, the rest as
//! literals, and each block gets its own Huffman codes. Any bytes round
//! trip; input that is not line protocol only compresses worse.
//!
//! The hot loops keep their state in locals and avoid branching on how
//! long a run of literals or a match is: both vary from token to token,
//! and mispredicted branches would cost more than the work. Small helpers
//! are `#[inline(always)]` because the component is built at opt-level
//! "s", where they would otherwise stay calls and halve the speed.

use crate::swar::{bytes_below, bytes_equal, find_byte, first, word};

/// How far back a match may reach.
const WINDOW: usize = 32 * 1024;
/// Shorter matches cost about as many bits as their literals.
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;
/// Input per block: enough to pay for the ~70 bytes of code lengths in
/// its header, few enough to follow changes in the data.
const BLOCK_BYTES: usize = 128 * 1024;
/// Tokens per block at most, for input of many short tokens.
const BLOCK_TOKENS: usize = 32 * 1024;

const END_OF_BLOCK: usize = 256;
const LIT_SYMS: usize = 286;
const DIST_SYMS: usize = 30;
const CL_SYMS: usize = 19;
const MAX_BITS: u32 = 15;
const MAX_CL_BITS: u32 = 7;
/// The order code-length code lengths are sent in (RFC 1951 §3.2.7).
const CL_ORDER: [u8; CL_SYMS] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// A token is a run of that many literals, or with this bit a match:
/// distance code in bits 23..28, length − 3 in bits 15..23, distance − 1
/// in bits 0..15.
const MATCH: u32 = 1 << 31;

/// Append a raw deflate stream of `data` to `out`.
pub fn deflate(data: &[u8], out: &mut Vec<u8>) {
    let mut block = Block::new(data.len());
    let mut tail = Tail::default();
    let mut series = SeriesTable::new();
    let mut prev = None;
    let mut p = 0;
    while p < data.len() {
        let start = p;
        let key_end = find_space_or_newline(data, p).unwrap_or(data.len());
        let (slot, same_series) = series.find(key_hash(&data[p..key_end]), p);
        // Without a reference (q == ref_end) the line is all literals.
        let (mut q, ref_end) = same_series.or(prev).unwrap_or((0, 0));
        loop {
            let done;
            (p, q, done) = block.diff(data, p, q, ref_end);
            if block.is_full(p) {
                block.write(data, out, &mut tail, false);
                block.start = p;
            }
            if done {
                break;
            }
        }
        series.record(slot, start, p);
        prev = Some((start, p));
    }
    block.write(data, out, &mut tail, true);
    if tail.n > 0 {
        out.push(tail.acc as u8);
    }
}

/// The newest line per series key hash, open-addressed. A false hit only
/// makes a worse reference: matches are checked byte by byte.
struct SeriesTable {
    /// (hash tag, line start, line end); an end of 0 is an empty slot.
    slots: [(u32, u32, u32); SLOTS],
    tag: u32,
}

const SLOTS: usize = 1024;
const PROBES: usize = 4;

impl SeriesTable {
    fn new() -> Self {
        SeriesTable {
            slots: [(0, 0, 0); SLOTS],
            tag: 0,
        }
    }

    /// The slot for `hash` and the line it holds, if that is in the window
    /// of a line at `start`.
    fn find(&mut self, hash: u64, start: usize) -> (usize, Option<(usize, usize)>) {
        self.tag = hash as u32;
        let home = (hash >> 54) as usize;
        let mut free = None;
        for i in 0..PROBES {
            let s = (home + i) % SLOTS;
            let (tag, at, end) = self.slots[s];
            let (at, end) = (at as usize, end as usize);
            // Out of the window, an entry is as good as empty.
            let usable = end != 0 && at < end && end <= start && start - at <= WINDOW;
            if usable && tag == self.tag {
                return (s, Some((at, end)));
            }
            if !usable && free.is_none() {
                free = Some(s);
            }
        }
        // With no room, the newest series takes its home slot.
        (free.unwrap_or(home), None)
    }

    /// The line from `start` to `end` as the newest of the series `find`
    /// was last asked for.
    fn record(&mut self, slot: usize, start: usize, end: usize) {
        self.slots[slot] = (self.tag, start as u32, end as u32);
    }
}

/// A hash of a series key, eight bytes at a time.
fn key_hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ word(c, 0)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    (h ^ u64::from_le_bytes(last)).wrapping_mul(K)
}

/// The tokens of one block and the frequencies of their symbols.
struct Block {
    /// Where the block starts in the input.
    start: usize,
    tokens: Vec<u32>,
    /// Literals since the last token, not yet in `tokens`.
    run: u32,
    lit_freq: [u32; LIT_SYMS],
    dist_freq: [u32; DIST_SYMS],
}

impl Block {
    fn new(input: usize) -> Self {
        Block {
            start: 0,
            tokens: Vec::with_capacity((input / 8).min(BLOCK_TOKENS) + 2),
            run: 0,
            lit_freq: [0; LIT_SYMS],
            dist_freq: [0; DIST_SYMS],
        }
    }

    /// Whether to end the block before input `p`. Each diff step adds at
    /// most two tokens and BLOCK_BYTES of input.
    #[inline(always)]
    fn is_full(&self, p: usize) -> bool {
        p - self.start >= BLOCK_BYTES || self.tokens.len() + 2 > BLOCK_TOKENS
    }

    /// Tokens for the line at `p` as a diff against the earlier line from
    /// `q` to `ref_end`, until its newline or the end of the input (true)
    /// or a full block (false). The earlier line has a newline only at
    /// its end, so a match ends where it copies one.
    fn diff(
        &mut self,
        data: &[u8],
        mut p: usize,
        mut q: usize,
        ref_end: usize,
    ) -> (usize, usize, bool) {
        let at_end = |p: usize| p == data.len() || data[p - 1] == b'\n';
        loop {
            if self.is_full(p) {
                return (p, q, false);
            }
            // At most a block's worth of literals per step.
            let rest = &data[p..data.len().min(p + BLOCK_BYTES)];
            let n = if q < ref_end {
                let m = common_prefix(rest, &data[q..ref_end]);
                if m >= MIN_MATCH && p - q <= WINDOW {
                    let len = match_piece(m);
                    self.matched(len, p - q);
                    p += len;
                    q += len;
                    if at_end(p) {
                        return (p, q, true);
                    }
                    if len < m || q >= ref_end {
                        continue;
                    }
                }
                // Here the lines differ: take this token as literals and
                // skip the earlier line's, to meet again after both.
                q += through_delimiter(&data[q..ref_end]);
                through_delimiter(&data[p..data.len().min(p + BLOCK_BYTES)])
            } else {
                line_len(rest)
            };
            self.literals(data, p, n);
            p += n;
            if at_end(p) {
                return (p, q, true);
            }
        }
    }

    /// The `n` bytes at `p` as literals.
    #[inline(always)]
    fn literals(&mut self, data: &[u8], p: usize, n: usize) {
        count_literals(&mut self.lit_freq, &data[p..], n);
        self.run += n as u32;
    }

    /// A copy of `len` (3..=258) bytes from `dist` back.
    #[inline(always)]
    fn matched(&mut self, len: usize, dist: usize) {
        debug_assert!((3..=MAX_MATCH).contains(&len) && (1..=WINDOW).contains(&dist));
        self.end_run();
        let (l, d) = ((len - 3) as u32, (dist - 1) as u32);
        let dcode = dist_code(d);
        self.tokens.push(MATCH | dcode << 23 | l << 15 | d);
        self.lit_freq[257 + LEN_CODE[l as usize] as usize] += 1;
        self.dist_freq[dcode as usize] += 1;
    }

    #[inline(always)]
    fn end_run(&mut self) {
        if self.run > 0 {
            self.tokens.push(self.run);
            self.run = 0;
        }
    }

    /// The tokens so far as a dynamic Huffman block, leaving the block
    /// empty.
    fn write(&mut self, data: &[u8], out: &mut Vec<u8>, tail: &mut Tail, last: bool) {
        self.end_run();
        self.lit_freq[END_OF_BLOCK] = 1;
        let mut lit_len = [0u8; LIT_SYMS];
        let mut dist_len = [0u8; DIST_SYMS];
        code_lengths(&mut self.lit_freq, MAX_BITS, &mut lit_len);
        code_lengths(&mut self.dist_freq, MAX_BITS, &mut dist_len);
        let mut lit = [0u32; LIT_SYMS];
        let mut dist = [0u32; DIST_SYMS];
        canonical(&lit_len, &mut lit);
        canonical(&dist_len, &mut dist);

        // Room for it all, so that the writer needs no checks but bounds.
        let pos = out.len();
        let bytes = self.bits(&lit_len, &dist_len).div_ceil(8) + MAX_HEADER_BYTES + 16;
        out.resize(pos + bytes, 0);
        let mut w = BitWriter {
            buf: out,
            pos,
            acc: tail.acc,
            n: tail.n,
        };
        w.put(last as u64 | 2 << 1, 3);
        write_code_lengths(&mut w, &lit_len, &dist_len);
        // Four literals per put when no literal code is longer than 14.
        let four = lit_len[..256].iter().all(|&l| l <= 14);
        write_tokens(&mut w, &self.tokens, &data[self.start..], &lit, &dist, four);
        w.put_code(lit[END_OF_BLOCK]);
        let end = w.pos;
        (tail.acc, tail.n) = (w.acc, w.n);
        out.truncate(end);

        self.tokens.clear();
        self.lit_freq = [0; LIT_SYMS];
        self.dist_freq = [0; DIST_SYMS];
    }

    /// The bits of the tokens and the end of block, extra bits included.
    fn bits(&self, lit_len: &[u8; LIT_SYMS], dist_len: &[u8; DIST_SYMS]) -> usize {
        let mut bits = 0;
        for (s, (&f, &l)) in self.lit_freq.iter().zip(lit_len).enumerate() {
            let extra = if s > END_OF_BLOCK {
                LEN_EXTRA[s - 257] as usize
            } else {
                0
            };
            bits += f as usize * (l as usize + extra);
        }
        for (c, (&f, &l)) in self.dist_freq.iter().zip(dist_len).enumerate() {
            bits += f as usize * (l as usize + dist_extra(c) as usize);
        }
        bits
    }
}

/// How much of a match of `m` to take at once: all of it up to 258, else
/// a piece that leaves at least MIN_MATCH, to be matched again.
#[inline(always)]
fn match_piece(m: usize) -> usize {
    if m <= MAX_MATCH {
        m
    } else if m - MAX_MATCH >= MIN_MATCH {
        MAX_MATCH
    } else {
        m - MIN_MATCH
    }
}

/// Bits not yet a whole byte, carried from block to block.
#[derive(Default)]
struct Tail {
    acc: u64,
    n: u32,
}

/// The most a block header takes: 3 + 14 bits, 19 code-length code
/// lengths of 3 bits, and 316 code lengths of at most 7 + 7 bits.
const MAX_HEADER_BYTES: usize = (3 + 14 + 19 * 3 + 316 * 14) / 8 + 1;

/// Each match length − 3 as its length code and extra bits, ready to
/// put: the bits, and their count in the top byte.
fn length_puts(lit: &[u32; LIT_SYMS]) -> [u32; 256] {
    let mut puts = [0; 256];
    for (l, put) in puts.iter_mut().enumerate() {
        let code = LEN_CODE[l] as usize;
        let c = lit[257 + code];
        let extra = l as u32 - LEN_BASE[code] as u32;
        *put = (c & 0xffff | extra << (c >> 16)) | ((c >> 16) + LEN_EXTRA[code] as u32) << 24;
    }
    puts
}

/// Each distance code with the count of its extra bits in the top byte.
fn dist_puts(dist: &[u32; DIST_SYMS]) -> [u32; DIST_SYMS] {
    let mut puts = [0; DIST_SYMS];
    for (c, put) in puts.iter_mut().enumerate() {
        *put = dist[c] | dist_extra(c) << 24;
    }
    puts
}

fn write_tokens(
    w: &mut BitWriter,
    tokens: &[u32],
    data: &[u8],
    lit: &[u32; LIT_SYMS],
    dist: &[u32; DIST_SYMS],
    four: bool,
) {
    let lens = length_puts(lit);
    let dists = dist_puts(dist);
    let mut pos = 0;
    for &t in tokens {
        if t & MATCH == 0 {
            if four {
                write_literals::<4>(w, lit, &data[pos..], t as usize);
            } else {
                write_literals::<3>(w, lit, &data[pos..], t as usize);
            }
            pos += t as usize;
        } else {
            // Both codes and their extra bits in one put (48 bits at most).
            let l = t >> 15 & 0xff;
            let len = lens[l as usize];
            let dc = dists[(t >> 23 & 31) as usize];
            let (dlen, dn) = (dc >> 16 & 0xff, dc >> 24);
            let extra = t & 0x7fff & ((1 << dn) - 1);
            let dist_part = (dc & 0xffff | extra << dlen) as u64;
            let len_n = len >> 24;
            w.put(
                (len & 0xff_ffff) as u64 | dist_part << len_n,
                len_n + dlen + dn,
            );
            pos += l as usize + 3;
        }
    }
}

/// The first `n` bytes of `data` as literals, `K` codes per put. Eight
/// at a time, and a short rest as eight with the extra ones masked to
/// empty codes, rather than a loop that would mispredict its end.
#[inline(always)]
fn write_literals<const K: u32>(w: &mut BitWriter, lit: &[u32; LIT_SYMS], data: &[u8], n: usize) {
    let mut i = 0;
    while i + 8 <= n {
        w.put_literals::<K>(lit, word(data, i), u64::MAX);
        i += 8;
    }
    let rest = n - i;
    if rest == 0 {
        return;
    }
    if i + 8 <= data.len() {
        let mask = u64::MAX >> (64 - 8 * rest);
        w.put_literals::<K>(lit, word(data, i), mask);
    } else {
        for &b in &data[i..n] {
            w.put_code(lit[b as usize]);
        }
    }
}

/// Counts the first `n` bytes of `data` as literals, eight at a time like
/// `write_literals`.
#[inline(always)]
fn count_literals(freq: &mut [u32; LIT_SYMS], data: &[u8], n: usize) {
    let mut i = 0;
    while i + 8 <= n {
        let w = word(data, i);
        for j in 0..8 {
            freq[(w >> (8 * j)) as usize & 0xff] += 1;
        }
        i += 8;
    }
    let rest = n - i;
    if rest == 0 {
        return;
    }
    if i + 8 <= data.len() {
        let w = word(data, i);
        for j in 0..8 {
            freq[(w >> (8 * j)) as usize & 0xff] += (j < rest) as u32;
        }
    } else {
        for &b in &data[i..n] {
            freq[b as usize] += 1;
        }
    }
}

/// Base − 3 and extra bits of each length code (RFC 1951 §3.2.5).
const LEN_BASE: [u8; 29] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// The length code of each length − 3: a lookup, as lengths vary too
/// much for a branch on their size to be predicted.
const LEN_CODE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut code = 0;
    while code < 29 {
        let mut l = LEN_BASE[code] as usize;
        while l < 256 && l < LEN_BASE[code] as usize + (1 << LEN_EXTRA[code]) {
            t[l] = code as u8;
            l += 1;
        }
        code += 1;
    }
    t
};

/// Distance code (0..30) for a distance − 1: two per power of two, told
/// apart by the bit under the top one.
#[inline(always)]
fn dist_code(d: u32) -> u32 {
    if d < 4 {
        return d;
    }
    let log = 31 - d.leading_zeros();
    2 * log + (d >> (log - 1) & 1)
}

/// Extra bits after distance code `c`.
fn dist_extra(c: usize) -> u32 {
    (c as u32 / 2).saturating_sub(1)
}

/// Lengths and distances with their code lengths, RLE-coded with the
/// code-length code (RFC 1951 §3.2.7).
fn write_code_lengths(bits: &mut BitWriter, lit: &[u8; LIT_SYMS], dist: &[u8; DIST_SYMS]) {
    let hlit = used_len(lit, 257);
    let hdist = used_len(dist, 1);
    let mut all = [0u8; LIT_SYMS + DIST_SYMS];
    all[..hlit].copy_from_slice(&lit[..hlit]);
    all[hlit..hlit + hdist].copy_from_slice(&dist[..hdist]);
    let mut rle = [(0u8, 0u8); LIT_SYMS + DIST_SYMS];
    let n = run_length(&all[..hlit + hdist], &mut rle);
    let rle = &rle[..n];

    let mut freq = [0u32; CL_SYMS];
    for &(s, _) in rle {
        freq[s as usize] += 1;
    }
    let mut cl_len = [0u8; CL_SYMS];
    code_lengths(&mut freq, MAX_CL_BITS, &mut cl_len);
    let mut cl = [0u32; CL_SYMS];
    canonical(&cl_len, &mut cl);
    let hclen = CL_ORDER
        .iter()
        .rposition(|&s| cl_len[s as usize] != 0)
        .map_or(4, |i| (i + 1).max(4));

    bits.put(
        ((hlit - 257) | (hdist - 1) << 5 | (hclen - 4) << 10) as u64,
        14,
    );
    for &s in &CL_ORDER[..hclen] {
        bits.put(cl_len[s as usize] as u64, 3);
    }
    for &(s, extra) in rle {
        let n = match s {
            16 => 2,
            17 => 3,
            18 => 7,
            _ => 0,
        };
        bits.put_code_extra(cl[s as usize], extra as u32, n);
    }
}

/// How many leading code lengths to send: through the last nonzero one.
fn used_len(lens: &[u8], min: usize) -> usize {
    lens.iter()
        .rposition(|&l| l != 0)
        .map_or(0, |i| i + 1)
        .max(min)
}

/// Code lengths as code-length symbols with their extra bits: 16 repeats
/// the previous length 3..6 times, 17 and 18 give 3..10 and 11..138 zeros.
fn run_length(lens: &[u8], rle: &mut [(u8, u8)]) -> usize {
    let mut n = 0;
    let mut push = |s: u8, extra: usize| {
        rle[n] = (s, extra as u8);
        n += 1;
    };
    let mut i = 0;
    while i < lens.len() {
        let l = lens[i];
        let mut run = lens[i..].iter().take_while(|&&x| x == l).count();
        i += run;
        if l == 0 {
            while run >= 11 {
                let k = run.min(138);
                push(18, k - 11);
                run -= k;
            }
            if run >= 3 {
                push(17, run - 3);
                run = 0;
            }
        } else {
            push(l, 0);
            run -= 1;
            while run >= 3 {
                let k = run.min(6);
                push(16, k - 3);
                run -= k;
            }
        }
        for _ in 0..run {
            push(l, 0);
        }
    }
    n
}

/// Huffman code lengths for `freq` of at most `limit` bits, forming a
/// complete code (Kraft sum exactly 1), which some inflaters (Go's)
/// require. Unused symbols get frequency 1 until at least two are used.
fn code_lengths(freq: &mut [u32], limit: u32, lens: &mut [u8]) {
    let mut used = freq.iter().filter(|&&f| f > 0).count();
    for f in freq.iter_mut() {
        if used >= 2 {
            break;
        }
        if *f == 0 {
            *f = 1;
            used += 1;
        }
    }
    // The used symbols, rarest first: (frequency << 16) | symbol.
    let mut keys = [0u64; LIT_SYMS];
    let mut n = 0;
    for (sym, &f) in freq.iter().enumerate() {
        if f > 0 {
            keys[n] = (f as u64) << 16 | sym as u64;
            n += 1;
        }
    }
    let keys = &mut keys[..n];
    crate::sort::sort(keys);
    let mut depth = [0u32; LIT_SYMS];
    for (d, &k) in depth.iter_mut().zip(keys.iter()) {
        *d = (k >> 16) as u32;
    }
    minimum_redundancy(&mut depth[..n]);

    let mut count = [0u32; MAX_BITS as usize + 1];
    for &d in &depth[..n] {
        count[d.min(limit) as usize] += 1;
    }
    limit_lengths(&mut count[..=limit as usize]);

    // The rarest symbols get the longest codes.
    lens.fill(0);
    let mut syms = keys.iter();
    for len in (1..=limit).rev() {
        for _ in 0..count[len as usize] {
            if let Some(&k) = syms.next() {
                lens[(k & 0xffff) as usize] = len as u8;
            }
        }
    }
}

/// Optimal code lengths, in place, for at least two weights sorted
/// ascending (Moffat and Katajainen's in-place algorithm, 1995).
fn minimum_redundancy(a: &mut [u32]) {
    let n = a.len();
    // Pair the two lightest of leaves and internal nodes; an internal
    // node's slot ends up holding its parent's index.
    a[0] += a[1];
    let (mut root, mut leaf) = (0, 2);
    for next in 1..n - 1 {
        if leaf >= n || a[root] < a[leaf] {
            a[next] = a[root];
            a[root] = next as u32;
            root += 1;
        } else {
            a[next] = a[leaf];
            leaf += 1;
        }
        if leaf >= n || (root < next && a[root] < a[leaf]) {
            a[next] += a[root];
            a[root] = next as u32;
            root += 1;
        } else {
            a[next] += a[leaf];
            leaf += 1;
        }
    }
    // Depths of the internal nodes, from the root down.
    a[n - 2] = 0;
    for next in (0..n - 2).rev() {
        a[next] = a[a[next] as usize] + 1;
    }
    // Depths of the leaves: whatever internal nodes do not use per level.
    let (mut avail, mut used, mut depth) = (1u32, 0u32, 0u32);
    let mut root = n as isize - 2;
    let mut next = n as isize - 1;
    while avail > 0 {
        while root >= 0 && a[root as usize] == depth {
            used += 1;
            root -= 1;
        }
        while avail > used {
            a[next as usize] = depth;
            next -= 1;
            avail -= 1;
        }
        avail = 2 * used;
        depth += 1;
        used = 0;
    }
}

/// Given the number of codes per length with the longer ones already
/// folded into the last, restore a Kraft sum of exactly 1 (zlib's and
/// miniz's way): drop a code from the longest length and split a shorter
/// one into two a bit longer, until it fits.
fn limit_lengths(count: &mut [u32]) {
    let max = count.len() - 1;
    let mut total: u32 = (1..=max).map(|l| count[l] << (max - l)).sum();
    while total > 1 << max {
        count[max] -= 1;
        if let Some(i) = (1..max).rev().find(|&i| count[i] > 0) {
            count[i] -= 1;
            count[i + 1] += 2;
        }
        total -= 1;
    }
}

/// Canonical codes (RFC 1951 §3.2.2) for `lens`, bit-reversed for LSB-first
/// output, as code | length << 16.
fn canonical(lens: &[u8], codes: &mut [u32]) {
    let mut count = [0u32; MAX_BITS as usize + 1];
    for &l in lens {
        count[l as usize] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; MAX_BITS as usize + 1];
    let mut code = 0;
    for bits in 1..=MAX_BITS as usize {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    for (c, &l) in codes.iter_mut().zip(lens) {
        *c = 0;
        if l > 0 {
            let l = l as usize;
            *c = next[l].reverse_bits() >> (32 - l) | (l as u32) << 16;
            next[l] += 1;
        }
    }
}

/// An LSB-first bit writer into room made beforehand. Every put stores a
/// whole word and keeps its whole bytes, rather than branching on how
/// full the word is.
struct BitWriter<'a> {
    buf: &'a mut [u8],
    /// Bytes done; the bits of the next are in `acc`.
    pos: usize,
    acc: u64,
    /// Bits in `acc`, always < 8 between calls.
    n: u32,
}

impl BitWriter<'_> {
    /// The low `n` (≤ 56) bits of `v`, which has no others set.
    #[inline(always)]
    fn put(&mut self, v: u64, n: u32) {
        self.acc |= v << self.n;
        self.n += n;
        let word: &mut [u8; 8] = (&mut self.buf[self.pos..self.pos + 8]).try_into().unwrap();
        *word = self.acc.to_le_bytes();
        let bytes = self.n / 8;
        self.pos += bytes as usize;
        self.acc >>= bytes * 8;
        self.n %= 8;
    }

    /// A code from `canonical`.
    #[inline(always)]
    fn put_code(&mut self, c: u32) {
        self.put((c & 0xffff) as u64, c >> 16);
    }

    /// A code from `canonical` followed by `n` extra bits.
    fn put_code_extra(&mut self, c: u32, extra: u32, n: u32) {
        let len = c >> 16;
        self.put((c & 0xffff | extra << len) as u64, len + n);
    }

    /// The eight bytes of `w` as literals, `K` codes per put, leaving out
    /// those whose byte in `mask` is 0.
    #[inline(always)]
    fn put_literals<const K: u32>(&mut self, lit: &[u32; LIT_SYMS], w: u64, mask: u64) {
        let code = |j: u32| {
            let keep = (mask >> (8 * j)) as u32 & 1;
            lit[(w >> (8 * j)) as usize & 0xff] & 0u32.wrapping_sub(keep)
        };
        let mut j = 0;
        while j < 8 {
            let (mut v, mut len) = (0u64, 0u32);
            for k in j..(j + K).min(8) {
                let c = code(k);
                v |= ((c & 0xffff) as u64) << len;
                len += c >> 16;
            }
            self.put(v, len);
            j += K;
        }
    }
}

/// Bytes through the first newline of `s`, or all of `s`.
#[inline(always)]
fn line_len(s: &[u8]) -> usize {
    (find_byte(s, 0, b'\n') + 1).min(s.len())
}

/// Index of the first space or newline from `from`, eight bytes at a time.
fn find_space_or_newline(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 8 <= data.len() {
        let w = word(data, i);
        let found = bytes_equal(w, b' ') | bytes_equal(w, b'\n');
        if found != 0 {
            return Some(i + first(found));
        }
        i += 8;
    }
    (i..data.len()).find(|&j| matches!(data[j], b' ' | b'\n'))
}

/// Length of the common prefix of `a` and `b`. Three words at a time,
/// combined without branches: matches end at all lengths, and a branch
/// per word would mispredict at most of them.
#[inline(always)]
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    // Equal bytes at the start of a word of differences; 8 if all are.
    let same = |i: usize| (word(a, i) ^ word(b, i)).trailing_zeros() as usize / 8;
    let mut i = 0;
    while i + 24 <= n {
        let (m0, m1, m2) = (same(i), same(i + 8), same(i + 16));
        let m = m0 + (m0 == 8) as usize * (m1 + (m1 == 8) as usize * m2);
        if m < 24 {
            return i + m;
        }
        i += 24;
    }
    while i + 8 <= n {
        let m = same(i);
        if m < 8 {
            return i + m;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Bytes up to and including the first token delimiter, or all of `s`;
/// eight at a time. Delimiters are `=` and every byte below `-`: space,
/// comma and newline, and a few (`"`, `+`, controls) that rarely occur
/// elsewhere and are as good a place to meet again.
#[inline(always)]
fn through_delimiter(s: &[u8]) -> usize {
    let mut i = 0;
    while i + 8 <= s.len() {
        let w = word(s, i);
        let found = bytes_below(w, b'-') | bytes_equal(w, b'=');
        if found != 0 {
            return i + first(found) + 1;
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| b < b'-' || b == b'=')
        .map_or(s.len(), |j| i + j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniz_oxide::inflate::decompress_to_vec;
    use proptest::prelude::*;
    use std::io::Write;

    fn compress(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        deflate(data, &mut out);
        out
    }

    fn assert_round_trips(data: &[u8]) -> usize {
        let z = compress(data);
        let back = decompress_to_vec(&z).expect("inflates");
        assert!(back == data, "round trip of {} bytes differs", data.len());
        z.len()
    }

    /// `n` lines like the host's generator makes: 10 series, 20 fields.
    fn generator_lines(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let device = i % 10;
            write!(
                out,
                "device_data,device=inverter-{device:03},model=sun2000-10ktl-m1,site=plant-{:02} seq={i}i",
                device % 7
            )
            .unwrap();
            for (k, name) in (1..).zip(crate::sim::INVERTER_FIELDS) {
                let v = (i.wrapping_mul(2654435761).wrapping_add(k * 7919)) % 100_000;
                write!(out, ",{name}={}.{:02}", v / 100, v % 100).unwrap();
            }
            writeln!(out, " {}", 1_700_000_000_000_000_000u64 + i).unwrap();
        }
        out
    }

    /// xorshift64*: reproducible noise without a dependency.
    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed >> 12;
                seed ^= seed << 25;
                seed ^= seed >> 27;
                (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn round_trips_edge_cases() {
        assert_round_trips(b"");
        assert_round_trips(b"x");
        assert_round_trips(b"\n");
        assert_round_trips(b"\n\n\n\n\n\n");
        assert_round_trips(b"m v=1 1");
        assert_round_trips(b"m v=1 1\nm v=1 1\nm v=1 1");
    }

    #[test]
    fn round_trips_a_repeated_line() {
        let line = b"m,host=a v=1 1\n";
        let data = line.repeat(1024 * 1024 / line.len() + 1);
        let size = assert_round_trips(&data);
        assert!(size < data.len() / 20, "{size}");
    }

    #[test]
    fn round_trips_generated_lines() {
        for n in [1, 2, 10, 100, 5000] {
            assert_round_trips(&generator_lines(n));
        }
    }

    #[test]
    fn round_trips_escapes_and_strings() {
        let mut data = Vec::new();
        for i in 0..500 {
            writeln!(
                data,
                "my\\ measurement,tag\\,key=a\\=b\\ c,t2=x msg=\"hello, world = {i}\",s=\"a \\\"quoted\\\" word\",n={i}i,b=true {}",
                1_700_000_000 + i * 37
            )
            .unwrap();
            if i % 7 == 0 {
                writeln!(data, "other f=\"{}\"", "z".repeat(i)).unwrap();
            }
        }
        assert_round_trips(&data);
    }

    #[test]
    fn round_trips_noise() {
        for (n, seed) in [(1, 1), (7, 2), (1000, 3), (200_000, 4)] {
            assert_round_trips(&noise(n, seed));
        }
        // Noise with line breaks and delimiters sprinkled in, and one huge
        // line with no newline at all.
        let mut data = noise(300_000, 5);
        for (i, b) in data.iter_mut().enumerate() {
            if i % 61 == 0 {
                *b = b'\n';
            }
        }
        assert_round_trips(&data);
        assert_round_trips(&b"abc=1,def=2 ".repeat(100_000));
    }

    #[test]
    fn round_trips_lines_sharing_nothing() {
        let mut data = Vec::new();
        for i in 0..5000u64 {
            writeln!(data, "m{i},id={} v{}={}", i * 31, i % 13, i * i).unwrap();
        }
        assert_round_trips(&data);
    }

    #[test]
    fn stays_in_the_window() {
        // The only line of its series is further back than 32 KiB.
        let mut data = b"far,k=v a=1,b=2,c=3 1\n".to_vec();
        let mut i = 0;
        while data.len() < 40_000 {
            writeln!(data, "near{i},n={i} x={i} {i}").unwrap();
            i += 1;
        }
        data.extend_from_slice(b"far,k=v a=1,b=2,c=3 2\n");
        assert_round_trips(&data);

        // The series' line starts just inside the window, but the current
        // line's longer values push the rest of it out.
        for gap in [32_740, 32_760, 32_767, 32_768, 32_769] {
            let mut data = b"s,k=v a=1,b=2,c=3,d=4,e=5\n".to_vec();
            let filler_len = gap - data.len();
            // One filler line of another series, ending in a newline.
            data.extend(std::iter::repeat_n(b'#', filler_len - 1));
            data.push(b'\n');
            data.extend_from_slice(b"s,k=v a=11111111111111111111,b=2,c=3,d=4,e=5\n");
            assert_round_trips(&data);
        }
    }

    proptest! {
        #[test]
        fn round_trips_line_ish_bytes(data in proptest::collection::vec(
            prop_oneof![
                9 => proptest::sample::select(b"a=, 0123456789\n.".to_vec()),
                1 => any::<u8>(),
            ],
            0..3000,
        )) {
            let z = compress(&data);
            prop_assert_eq!(decompress_to_vec(&z).expect("inflates"), data);
        }
    }

    #[test]
    fn skewed_frequencies_get_limited_complete_codes() {
        let fib = |n: usize| {
            let (mut a, mut b) = (1u32, 1u32);
            (0..n)
                .map(|_| {
                    let f = a;
                    (a, b) = (b, a + b);
                    f
                })
                .collect::<Vec<u32>>()
        };
        // Fibonacci frequencies make optimal codes one bit longer per
        // symbol: far over the limits.
        let mut many = fib(25);
        many.resize(LIT_SYMS, 1);
        for (freq, limit) in [
            (fib(30), MAX_BITS),
            (many, MAX_BITS),
            (fib(19), MAX_CL_BITS),
        ] {
            let mut optimal = freq.clone();
            minimum_redundancy(&mut optimal);
            assert!(
                optimal.iter().any(|&d| d > limit),
                "the case needs limiting"
            );
            let (mut freq, n) = (freq.clone(), freq.len());
            let mut lens = vec![0u8; n];
            code_lengths(&mut freq, limit, &mut lens);
            assert!(
                lens.iter().all(|&l| (1..=limit as u8).contains(&l)),
                "{lens:?}"
            );
            assert_eq!(kraft(&lens, limit), 1 << limit, "{lens:?}");
        }
        // Few used symbols among many, and none or one.
        for used in [0, 1, 2, 3, 200] {
            let mut freq = [0u32; LIT_SYMS];
            for (i, f) in freq.iter_mut().enumerate().take(used) {
                *f = 1 + (i as u32 % 5) * 1000;
            }
            let mut lens = [0u8; LIT_SYMS];
            code_lengths(&mut freq, MAX_BITS, &mut lens);
            assert!(lens.iter().filter(|&&l| l > 0).count() >= 2);
            assert_eq!(kraft(&lens, MAX_BITS), 1 << MAX_BITS, "{used}");
        }
    }

    /// Kraft sum of `lens` in units of 2^-limit.
    fn kraft(lens: &[u8], limit: u32) -> u32 {
        lens.iter()
            .filter(|&&l| l > 0)
            .map(|&l| 1 << (limit - l as u32))
            .sum()
    }

    /// Reads an LSB-first bit stream.
    struct Reader<'a> {
        data: &'a [u8],
        bit: usize,
    }

    impl Reader<'_> {
        fn bits(&mut self, n: u32) -> u32 {
            let mut v = 0;
            for i in 0..n {
                let b = self.data[self.bit / 8] >> (self.bit % 8) & 1;
                v |= (b as u32) << i;
                self.bit += 1;
            }
            v
        }

        /// One symbol of the canonical code with `lens`.
        fn symbol(&mut self, lens: &[u8]) -> usize {
            let mut codes = vec![0u32; lens.len()];
            canonical(lens, &mut codes);
            let (mut code, mut len) = (0u32, 0u32);
            loop {
                code |= self.bits(1) << len;
                len += 1;
                if let Some(s) = (0..lens.len()).find(|&s| codes[s] == code | len << 16) {
                    return s;
                }
                assert!(len <= MAX_BITS, "no such code");
            }
        }
    }

    /// The three code length tables of the first block of a stream.
    fn first_block_trees(z: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut r = Reader { data: z, bit: 0 };
        r.bits(1);
        assert_eq!(r.bits(2), 2, "a dynamic block");
        let hlit = r.bits(5) as usize + 257;
        let hdist = r.bits(5) as usize + 1;
        let hclen = r.bits(4) as usize + 4;
        assert!(hlit <= LIT_SYMS && hdist <= DIST_SYMS);
        let mut cl = vec![0u8; CL_SYMS];
        for &s in &CL_ORDER[..hclen] {
            cl[s as usize] = r.bits(3) as u8;
        }
        let mut lens = Vec::new();
        while lens.len() < hlit + hdist {
            match r.symbol(&cl) {
                16 => {
                    let prev = *lens.last().expect("a length to repeat");
                    let n = 3 + r.bits(2) as usize;
                    lens.extend(std::iter::repeat_n(prev, n));
                }
                17 => lens.extend(std::iter::repeat_n(0, 3 + r.bits(3) as usize)),
                18 => lens.extend(std::iter::repeat_n(0, 11 + r.bits(7) as usize)),
                l => lens.push(l as u8),
            }
        }
        assert_eq!(lens.len(), hlit + hdist, "runs stop at the end");
        let dist = lens.split_off(hlit);
        (cl, lens, dist)
    }

    #[test]
    fn block_headers_have_complete_limited_codes() {
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            b"x".to_vec(),
            b"aaaa".to_vec(),
            noise(5000, 9),
            generator_lines(50),
            b"m,host=a v=1 1\n".repeat(100),
        ];
        for data in &inputs {
            let (cl, lit, dist) = first_block_trees(&compress(data));
            assert_eq!(kraft(&cl, MAX_CL_BITS), 1 << MAX_CL_BITS, "{cl:?}");
            assert_eq!(kraft(&lit, MAX_BITS), 1 << MAX_BITS, "{lit:?}");
            assert_eq!(kraft(&dist, MAX_BITS), 1 << MAX_BITS, "{dist:?}");
            assert!(cl.iter().all(|&l| l <= 7));
            assert!(lit[END_OF_BLOCK] > 0);
        }
    }

    #[test]
    fn length_and_distance_codes_match_the_rfc() {
        const RFC_LEN_BASE: [u32; 29] = [
            3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
            115, 131, 163, 195, 227, 258,
        ];
        const RFC_LEN_EXTRA: [u32; 29] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
        ];
        for len in 3..=258u32 {
            let c = LEN_CODE[len as usize - 3] as usize;
            let extra = len - 3 - LEN_BASE[c] as u32;
            assert_eq!(LEN_BASE[c] as u32 + 3, RFC_LEN_BASE[c], "{len}");
            assert_eq!(LEN_EXTRA[c] as u32, RFC_LEN_EXTRA[c], "{len}");
            assert!(extra < 1 << LEN_EXTRA[c], "{len}");
        }
        const DIST_BASE: [u32; 30] = [
            1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
            1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
        ];
        for dist in 1..=32768u32 {
            let c = dist_code(dist - 1) as usize;
            let n = dist_extra(c);
            let extra = (dist - 1) & ((1 << n) - 1);
            let want_n = if c < 4 { 0 } else { c as u32 / 2 - 1 };
            assert_eq!((DIST_BASE[c] + extra, n), (dist, want_n), "{dist}");
        }
    }

    #[test]
    fn is_no_bigger_than_miniz_fast() {
        let data = generator_lines(5000);
        let ours = assert_round_trips(&data);
        let miniz = miniz_oxide::deflate::compress_to_vec(&data, 1).len();
        eprintln!(
            "5000 lines, {} bytes: ours {ours} bytes, miniz level 1 {miniz} bytes ({:.3}x)",
            data.len(),
            ours as f64 / miniz as f64
        );
        assert!(ours as f64 <= 1.15 * miniz as f64);
    }
}
