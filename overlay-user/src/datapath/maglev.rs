//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table every node builds
//! the same way from a service's backends, so any node picks the same backend for a flow.
//! Pure code: no I/O, tested on its own.
//!
//! Consistency across nodes needs three things to be deterministic: the hash of a backend's
//! name ([`backend_hash`]), the fill ([`build`]), and the table size the caller picks. Only the
//! first two live here; the golden test pins them, so a change that would make two versions
//! of the agent disagree cannot slip in unnoticed.
//!
//! A backend's preference order is not the paper's bare offset + j * skip: two backends whose
//! skips are equal or closely related chase each other through the table, and removing a
//! third one can then move many of their slots (16% of the table in the worst case measured).
//! Passing that walk through a fixed shuffle of the slots, plus a per-backend shift, breaks
//! the pattern for one extra lookup per probe.

/// Smallest slots per backend (of 100, 200, 500, 1000, 2000) at which removing one of N
/// backends, or adding one, moved under 1% of the table's slots beyond those the change
/// itself must move, for every N and change tried (see `disruption_table` in the tests).
/// Only while the table size stays the same across the change: a new size reshuffles
/// nearly every slot.
pub const MIN_SLOTS_FOR_1PCT_DISRUPTION: u32 = 2000;

/// Size of a service's lookup table: the smallest prime (every backend's skip is then a full
/// permutation) at or above `slots_per_backend` times the number of backends rounded up to a
/// power of two. The rounding keeps the size, and so nearly every flow's backend, the same
/// when a backend is added, removed or drained, except when the count crosses a power of two
/// (a new size reshuffles the table, as changing Katran's or Cilium's table size does).
pub fn table_size(backends: usize, slots_per_backend: u32) -> u32 {
    let n = backends.max(1).next_power_of_two() as u64;
    let mut m = (n * slots_per_backend.max(1) as u64).max(2);
    while !is_prime(m) {
        m += 1;
    }
    m as u32
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Stable 64-bit hash of a backend's endpoint name: FNV-1a, then splitmix64's finalizer to
/// spread FNV's weak low bits. Spelled out rather than std's hasher, whose output may change
/// between Rust versions, because every node must derive the same permutations.
pub fn backend_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The Maglev lookup table of `m` slots (`m` from [`table_size`]) for `backends` given as
/// (endpoint name, weight); each slot holds an index into `backends`. Weight 0 gets no slot
/// (draining); the others get shares of the table proportional to their weights, each within
/// one slot of exact. Empty if `m` is 0 or no backend has a weight.
///
/// Only the index values depend on the order of `backends`: the fill runs in order of name
/// hash, so nodes that list the same backends differently still agree slot by slot.
/// Names are expected to be unique (they are endpoint names).
pub fn build(backends: &[(&str, u32)], m: u32) -> Vec<u32> {
    let mut live: Vec<Live> = backends
        .iter()
        .enumerate()
        .filter(|(_, &(_, weight))| weight > 0)
        .map(|(index, &(name, weight))| Live::new(index as u32, name, weight, m))
        .collect();
    if live.is_empty() || m == 0 {
        return Vec::new();
    }
    live.sort_by(|a, b| (a.hash, a.name).cmp(&(b.hash, b.name)));
    let targets = targets(&live, m);
    let shuffled = shuffle(m);

    let mut table = vec![EMPTY; m as usize];
    // Each turn fills one slot and the targets sum to m, so every turn finds an empty slot
    // (its permutation visits every slot) and the table ends full.
    for pos in turn_order(&targets) {
        let b = &mut live[pos as usize];
        loop {
            // Sums of two values below m: subtractions instead of divisions on the hot loop.
            let mut slot = shuffled[b.next as usize] as u64 + b.shift;
            if slot >= m as u64 {
                slot -= m as u64;
            }
            let slot = slot as usize;
            b.next += b.skip;
            if b.next >= m as u64 {
                b.next -= m as u64;
            }
            if table[slot] == EMPTY {
                table[slot] = b.index;
                break;
            }
        }
    }
    table
}

/// Marks a slot not filled yet; never an index, as `build` takes fewer than 2^32 backends
/// in practice (each needs slots of a table of at most 2^32).
const EMPTY: u32 = u32::MAX;

/// A backend with a weight, as the fill sees it.
struct Live<'a> {
    index: u32,
    name: &'a str,
    hash: u64,
    weight: u32,
    /// Its permutation's next step: a slot of the shuffle, walked by `skip` from the offset.
    next: u64,
    skip: u64,
    /// Added to the shuffled slot, so that two backends' walks differing by a few steps
    /// still land on unrelated slots.
    shift: u64,
}

impl<'a> Live<'a> {
    fn new(index: u32, name: &'a str, weight: u32, m: u32) -> Self {
        let hash = backend_hash(name);
        let m = m.max(1) as u64;
        // Hashes derived from the first keep offset, skip and shift independent.
        let mut skip = mix(hash ^ 0x9e37_79b9_7f4a_7c15) % (m - 1).max(1) + 1;
        // A no-op for a prime m; otherwise it keeps the permutation full so the fill ends.
        while gcd(skip, m) != 1 {
            skip = skip % (m - 1) + 1;
        }
        let shift = mix(hash ^ 0x6a09_e667_f3bc_c909) % m;
        Live { index, name, hash, weight, next: hash % m, skip, shift }
    }
}

/// A fixed pseudo-random permutation of `0..m`, the same on every node: Fisher-Yates driven
/// by splitmix64 from a constant seed.
fn shuffle(m: u32) -> Vec<u32> {
    let mut slots: Vec<u32> = (0..m).collect();
    let mut state = 0u64;
    for i in (1..slots.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        // Multiply-shift maps the 64-bit draw onto 0..=i without a division.
        let j = (mix(state) as u128 * (i as u128 + 1)) >> 64;
        slots.swap(i, j as usize);
    }
    slots
}

/// Each backend's share of the `m` slots by largest remainder, so each is within one slot
/// of m * weight / total; the leftover slots go to the largest remainders, ties to the
/// earlier in hash order (with equal weights: the first ones, as in classic Maglev).
fn targets(live: &[Live], m: u32) -> Vec<u64> {
    let m = m as u128;
    let total: u128 = live.iter().map(|b| b.weight as u128).sum();
    let mut targets: Vec<u64> = live.iter().map(|b| (m * b.weight as u128 / total) as u64).collect();
    let leftover = m as u64 - targets.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..live.len()).collect();
    by_remainder.sort_by_key(|&pos| std::cmp::Reverse(m * live[pos].weight as u128 % total));
    for &pos in by_remainder.iter().take(leftover as usize) {
        targets[pos] += 1;
    }
    targets
}

/// The order in which backends (by position) take their turns. Backend i's k-th turn falls
/// in round floor(k * R / target_i), R the largest target, and each round goes in position
/// order. With equal weights that is the classic Maglev round robin; with unequal ones each
/// backend's turns spread evenly over the fill, so the table fills evenly too. A counting
/// sort by round keeps this linear in m, however skewed the weights.
fn turn_order(targets: &[u64]) -> Vec<u32> {
    let rounds = targets.iter().copied().max().unwrap_or(0);
    // round_start[r]: where round r's turns begin in the order (after the prefix sum).
    let mut round_start = vec![0usize; rounds as usize + 1];
    for_each_turn(targets, rounds, |_, round| round_start[round + 1] += 1);
    for r in 1..round_start.len() {
        round_start[r] += round_start[r - 1];
    }
    let mut order = vec![0; targets.iter().sum::<u64>() as usize];
    for_each_turn(targets, rounds, |pos, round| {
        order[round_start[round]] = pos;
        round_start[round] += 1;
    });
    order
}

/// Calls `f(position, round)` for every turn, by position then turn.
fn for_each_turn(targets: &[u64], rounds: u64, mut f: impl FnMut(u32, usize)) {
    for (pos, &target) in targets.iter().enumerate().filter(|(_, &t)| t > 0) {
        // floor(k * rounds / target), stepped without a division per turn.
        let (step, extra) = (rounds / target, rounds % target);
        let (mut round, mut remainder) = (0, 0);
        for _ in 0..target {
            f(pos as u32, round as usize);
            round += step;
            remainder += extra;
            if remainder >= target {
                remainder -= target;
                round += 1;
            }
        }
    }
}

/// Longest sequence [`wrr_sequence`] returns, so a scheduler's cycle stays small.
const WRR_MAX_LEN: u64 = 65_536;

/// One cycle of nginx's smooth weighted round robin over `weights`: indexes into `weights`,
/// each appearing in proportion to its weight and spread out rather than in runs. Weights
/// are reduced by their gcd, and scaled down (each positive one kept at least 1) if the
/// cycle would exceed 65,536 entries (more positive weights than that give one entry
/// each); weight 0 never appears. Empty if all weights are 0.
pub fn wrr_sequence(weights: &[u32]) -> Vec<u32> {
    let mut reduced: Vec<u64> = weights.iter().map(|&w| w as u64).collect();
    let positive = reduced.iter().filter(|&&w| w > 0).count() as u64;
    if positive == 0 {
        return Vec::new();
    }
    reduce(&mut reduced);
    let sum: u64 = reduced.iter().sum();
    if sum > WRR_MAX_LEN {
        // Scaling into (cap - positive) leaves room for every weight rounded up to 1.
        let room = WRR_MAX_LEN.saturating_sub(positive);
        for w in reduced.iter_mut().filter(|w| **w > 0) {
            *w = (*w as u128 * room as u128 / sum as u128).max(1) as u64;
        }
        reduce(&mut reduced);
    }
    let total: i64 = reduced.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; reduced.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = None;
        for (i, (&w, c)) in reduced.iter().zip(current.iter_mut()).enumerate() {
            if w == 0 {
                continue;
            }
            *c += w as i64;
            if best.is_none_or(|(_, top)| *c > top) {
                best = Some((i, *c));
            }
        }
        if let Some((i, _)) = best {
            current[i] -= total;
            sequence.push(i as u32);
        }
    }
    sequence
}

/// Divides the weights by the gcd of the positive ones.
fn reduce(weights: &mut [u64]) {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    if g > 1 {
        weights.iter_mut().for_each(|w| *w /= g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test randomness (splitmix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn names(n: usize, salt: u64) -> Vec<String> {
        (0..n).map(|i| format!("pod-{salt}-{i}.default:8080")).collect()
    }

    /// The table as owner names, so tables over different backend lists compare.
    fn owners<'a>(backends: &[(&'a str, u32)], m: u32) -> Vec<&'a str> {
        build(backends, m).iter().map(|&i| backends[i as usize].0).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        table.iter().for_each(|&i| c[i as usize] += 1);
        c
    }

    #[test]
    fn table_size_is_the_next_prime() {
        assert_eq!(table_size(3, 100), 401, "4 x 100 rounded up to a prime");
        assert_eq!(table_size(4, 100), 401, "the size holds from 3 to 4 backends");
        assert_eq!(table_size(0, 100), 101);
        assert_eq!(table_size(1, 100), 101);
        assert_eq!(table_size(10, 1000), 16001);
        assert_eq!(table_size(1, 0), 2);
        for (n, s) in [(1, 7), (5, 100), (17, 333), (100, 1000)] {
            let m = table_size(n, s);
            let at_least = n.next_power_of_two() as u64 * s as u64;
            assert!(is_prime(m as u64) && m as u64 >= at_least);
            assert!((at_least..m as u64).all(|k| !is_prime(k)));
        }
    }

    #[test]
    fn hash_is_pinned() {
        // FNV-1a of "" is its offset basis; the rest pins the finalizer.
        assert_eq!(backend_hash(""), mix(0xcbf2_9ce4_8422_2325));
        assert_ne!(backend_hash("web.1"), backend_hash("web.2"));
        assert_eq!(backend_hash("web.1"), 0x3c89_43e3_49a9_42b4);
    }

    #[test]
    fn fills_every_slot_and_skips_draining() {
        let backends = [("a", 1), ("b", 0), ("c", 3), ("d", 1)];
        let m = table_size(backends.len(), 100);
        let table = build(&backends, m);
        assert_eq!(table.len(), m as usize);
        let c = counts(&table, backends.len());
        assert_eq!(c[1], 0);
        assert!(c[0] > 0 && c[2] > 0 && c[3] > 0);
        assert_eq!(c.iter().sum::<usize>(), m as usize);

        assert!(build(&[("a", 0), ("b", 0)], 101).is_empty());
        assert!(build(&[], 101).is_empty());
        assert!(build(&[("a", 1)], 0).is_empty());
        assert_eq!(build(&[("a", 1)], 1), vec![0]);
        // A non-prime size still terminates with every slot filled.
        let t = build(&[("a", 1), ("b", 2), ("c", 5)], 1000);
        assert_eq!(counts(&t, 3), vec![125, 250, 625]);
    }

    #[test]
    fn turns_interleave_by_weight() {
        // Equal targets, the first ones with an extra slot: the classic round robin.
        assert_eq!(turn_order(&[3, 3, 2]), vec![0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(turn_order(&[1, 4, 0]), vec![0, 1, 1, 1, 1]);
        assert_eq!(turn_order(&[2, 4]), vec![0, 1, 1, 0, 1, 1]);
    }

    #[test]
    fn fewer_slots_than_backends() {
        let list = names(5, 4);
        let backends: Vec<(&str, u32)> = list.iter().map(|s| (s.as_str(), 1)).collect();
        let table = build(&backends, 3);
        assert_eq!(table.len(), 3);
        assert_eq!(counts(&table, 5).iter().filter(|&&c| c == 1).count(), 3);
    }

    #[test]
    fn independent_of_backend_order() {
        let list = names(20, 1);
        let backends: Vec<(&str, u32)> = list.iter().enumerate().map(|(i, n)| (n.as_str(), 1 + i as u32 % 3)).collect();
        let m = table_size(backends.len(), 100);
        let want = owners(&backends, m);
        let mut rng = Rng(7);
        for _ in 0..5 {
            let mut shuffled = backends.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i + 1));
            }
            assert_eq!(owners(&shuffled, m), want);
        }
    }

    #[test]
    fn shares_follow_weights() {
        for weights in [&[1, 2][..], &[1, 1, 1, 5], &[3, 7, 10], &[1, 1], &[2, 3, 5, 7, 11]] {
            let list = names(weights.len(), 2);
            let backends: Vec<(&str, u32)> = list.iter().map(String::as_str).zip(weights.iter().copied()).collect();
            let m = table_size(backends.len(), 100);
            let total: u32 = weights.iter().sum();
            for (i, &got) in counts(&build(&backends, m), weights.len()).iter().enumerate() {
                let want = m as f64 * weights[i] as f64 / total as f64;
                let off = (got as f64 - want).abs() / want;
                assert!(off < 0.01, "weights {weights:?}: backend {i} has {got}, wants {want:.2}");
            }
        }
    }

    /// Slots that changed owner beyond those the change itself must move, as a fraction of
    /// the table: on removal, slots the removed backend did not own; on addition, slots that
    /// did not go to the new backend. `m` is the same before and after.
    fn disruption(before: &[&str], after: &[&str], gone_or_new: &str) -> f64 {
        let moved =
            before.iter().zip(after).filter(|(b, a)| b != a && **b != gone_or_new && **a != gone_or_new).count();
        moved as f64 / before.len() as f64
    }

    /// Worst disruption over `trials` random backend sets of each size in `sizes`, one
    /// random removal and one addition each: (on removal, on addition).
    fn worst_disruption(s: u32, weighted: bool, sizes: &[usize], trials: u64) -> (f64, f64) {
        let (mut removal, mut addition) = (0f64, 0f64);
        let mut rng = Rng(s as u64 * 2 + weighted as u64);
        for &n in sizes {
            for trial in 0..trials {
                let list = names(n + 1, trial);
                let all: Vec<(&str, u32)> =
                    list.iter().map(|s| (s.as_str(), if weighted { 1 + rng.below(4) as u32 } else { 1 })).collect();
                let m = table_size(n, s);
                // Removal: N backends, then one fewer.
                let base = &all[..n];
                let before = owners(base, m);
                let gone = rng.below(n);
                let mut rest = base.to_vec();
                rest.remove(gone);
                removal = removal.max(disruption(&before, &owners(&rest, m), base[gone].0));
                // Addition: N backends, then one more.
                let after = owners(&all, m);
                addition = addition.max(disruption(&before, &after, all[n].0));
            }
        }
        (removal, addition)
    }

    #[test]
    fn removing_or_adding_one_backend_disrupts_under_1pct() {
        for weighted in [false, true] {
            let (removal, addition) = worst_disruption(MIN_SLOTS_FOR_1PCT_DISRUPTION, weighted, &[3, 10, 50], 4);
            assert!(removal < 0.01 && addition < 0.01, "{removal} {addition} ({weighted})");
        }
    }

    /// Prints the disruption table that chose MIN_SLOTS_FOR_1PCT_DISRUPTION (a minute in
    /// release): `cargo test -p overlay-user --release --lib maglev -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn disruption_table() {
        for weighted in [false, true] {
            for s in [100, 200, 500, 1000, 2000] {
                let (r, a) = worst_disruption(s, weighted, &[3, 5, 10, 30, 50], 100);
                let (r, a) = (r * 100.0, a * 100.0);
                println!("weighted={weighted} s={s}: worst removal {r:.3}%, addition {a:.3}%");
            }
        }
    }

    /// Build time for 10 backends at 1000 slots each (meaningful in release).
    #[test]
    #[ignore]
    fn build_time() {
        let list = names(10, 3);
        let backends: Vec<(&str, u32)> = list.iter().map(|s| (s.as_str(), 1)).collect();
        let m = table_size(10, 1000);
        let runs = 200;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            std::hint::black_box(build(std::hint::black_box(&backends), m));
        }
        println!("build N=10 m={m}: {:?} per table", start.elapsed() / runs);
    }

    fn render(table: &[u32]) -> String {
        let mut out = String::from(
            "# build(&[(\"web.1\", 1), (\"web.2\", 2), (\"web.3\", 1)], 307): \
             backend index per slot, 20 slots a line\n",
        );
        for line in table.chunks(20) {
            let line: Vec<String> = line.iter().map(u32::to_string).collect();
            out += &line.join(" ");
            out.push('\n');
        }
        out
    }

    #[test]
    fn golden_table() {
        let table = build(&[("web.1", 1), ("web.2", 2), ("web.3", 1)], 307);
        assert_eq!(render(&table), include_str!("maglev_golden.txt"));
    }

    #[test]
    fn wrr_counts_follow_reduced_weights() {
        assert_eq!(wrr_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(wrr_sequence(&[2, 4, 0, 6]).len(), 6);
        assert_eq!(counts(&wrr_sequence(&[2, 4, 0, 6]), 4), vec![1, 2, 0, 3]);
        assert_eq!(wrr_sequence(&[1, 1, 1]), vec![0, 1, 2]);
        assert!(wrr_sequence(&[0, 0]).is_empty());
        assert!(wrr_sequence(&[]).is_empty());
    }

    #[test]
    fn wrr_is_smooth() {
        for weights in [&[5, 1, 1][..], &[3, 7, 10], &[1, 2, 3, 4, 5, 6], &[100, 1]] {
            let seq = wrr_sequence(weights);
            let sum: u32 = weights.iter().sum();
            let mut seen = vec![0u32; weights.len()];
            for (len, &i) in seq.iter().enumerate() {
                seen[i as usize] += 1;
                for (j, &w) in weights.iter().enumerate() {
                    let fair = (len as f64 + 1.0) * w as f64 / sum as f64;
                    assert!((seen[j] as f64 - fair).abs() < 1.0 + 1e-9, "{weights:?} at {len}");
                }
            }
        }
    }

    #[test]
    fn wrr_is_capped() {
        let seq = wrr_sequence(&[1_000_000, 1, 999_999]);
        assert!(seq.len() as u64 <= WRR_MAX_LEN);
        let c = counts(&seq, 3);
        assert!(c[1] >= 1);
        let ratio = c[0] as f64 / c[2] as f64;
        assert!((ratio - 1.0).abs() < 0.001, "{c:?}");
        assert!(wrr_sequence(&[u32::MAX; 4]).len() == 4);
    }
}
