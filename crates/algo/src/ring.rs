//! A consistent-hash ring with virtual nodes, and the bounded-load walk.
//!
//! Each node owns points on a ring of 2^64 positions; an item at position x
//! belongs to the owner of the first point at or after x, going clockwise and
//! wrapping at the end (its *successor*). Adding or removing a node moves only
//! the items between its points and their predecessors, so about 1/n of the
//! items, instead of almost all of them as hash-mod-N does.
//!
//! One point per node gives uneven arcs; Ketama-style **virtual nodes** give
//! each node many points, in proportion to its declared capacity (its weight),
//! which evens the arcs out and lets a bigger machine take a bigger share.
//!
//! **Bounded loads** (Mirrokni, Thorup and Zadimoghaddam, 2016) add a cap per
//! node: when an item's successor is full, the item keeps walking clockwise to
//! the next node with room. With a cap of ⌈(1+ε)·mean⌉ no node ends above it,
//! and the walk still moves few items when nodes come and go.
//!
//! Chapter: H3 data distribution in COURSE.md, with its worked example (keys
//! D0-D6 at 100-700, nodes at 400, 600 and 900) as a test below.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the hash that places a node's virtual points; distinct from the
/// partition hash so a node name and a key never collide by construction.
const POINT_SEED: u64 = 0x7a6f_6e67_6865_6e67; // "zongheng"

/// Most virtual points on one ring. Lookups are a binary search, so the
/// bound is about memory and build time (16 bytes a point).
pub const RING_POINTS_MAX: usize = 1 << 20;

/// A ring over nodes numbered `0..nodes`; callers keep the names.
#[derive(Debug, Clone)]
pub struct HashRing {
    /// (position, node index), sorted; ties broken by node index so the order
    /// never depends on input order.
    points: Vec<(u64, usize)>,
    nodes: usize,
}

/// Why a ring cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// More virtual points than [`RING_POINTS_MAX`].
    TooManyPoints { points: usize },
    /// A ring needs at least one point.
    Empty,
}

impl HashRing {
    /// A ring where node `i` (named `names[i]`) owns `points_per_node[i]`
    /// virtual points at `xxh3_64_with_seed("{name}#{k}", POINT_SEED)`.
    pub fn new(names: &[&str], points_per_node: &[u32]) -> Result<Self, RingError> {
        assert_eq!(names.len(), points_per_node.len(), "one point count per node");
        let total: usize = points_per_node.iter().map(|&count| count as usize).sum();
        if total > RING_POINTS_MAX {
            return Err(RingError::TooManyPoints { points: total });
        }
        let mut points = Vec::with_capacity(total);
        for (node, (name, &count)) in names.iter().zip(points_per_node).enumerate() {
            for k in 0..count {
                points.push((xxh3_64_with_seed(format!("{name}#{k}").as_bytes(), POINT_SEED), node));
            }
        }
        Self::from_points(points, names.len())
    }

    /// A ring with the given (position, node index) points, for worked
    /// examples and tests that want positions chosen by hand.
    pub fn from_points(mut points: Vec<(u64, usize)>, nodes: usize) -> Result<Self, RingError> {
        if points.is_empty() {
            return Err(RingError::Empty);
        }
        if points.len() > RING_POINTS_MAX {
            return Err(RingError::TooManyPoints { points: points.len() });
        }
        assert!(
            points.iter().all(|&(_, node)| node < nodes),
            "a point names a node outside 0..{nodes}"
        );
        points.sort_unstable();
        Ok(Self { points, nodes })
    }

    /// How many nodes the ring was built over (some may own no point).
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// The node owning the first point at or after `position`, wrapping.
    pub fn successor(&self, position: u64) -> usize {
        self.walk(position).next().expect("a ring has at least one point")
    }

    /// Every node in clockwise order from `position`, each once: the order in
    /// which replicas and overflowing items are offered to nodes.
    pub fn walk_distinct(&self, position: u64) -> impl Iterator<Item = usize> + '_ {
        let mut seen = vec![false; self.nodes];
        self.walk(position)
            .filter(move |&node| !std::mem::replace(&mut seen[node], true))
    }

    /// The owners of all points once around the ring from `position`.
    fn walk(&self, position: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&(point, _)| point < position);
        let len = self.points.len();
        (0..len).map(move |step| self.points[(start + step) % len].1)
    }

    /// Bounded-load lookup: the first node clockwise from `position` whose
    /// load is below its cap. `None` when every node is full.
    pub fn successor_bounded(&self, position: u64, loads: &[usize], caps: &[usize]) -> Option<usize> {
        self.walk_distinct(position).find(|&node| loads[node] < caps[node])
    }
}

/// `⌈(1+ε) · items · weight / total_weight⌉`: the most items a node of this
/// weight may hold under bounded loads. Integer arithmetic on ε in parts per
/// million, so every platform computes the same caps.
pub fn bounded_cap(items: usize, weight: u64, total_weight: u64, epsilon_ppm: u64) -> usize {
    assert!(total_weight > 0 && weight <= total_weight);
    let numerator = items as u128 * weight as u128 * (1_000_000 + epsilon_ppm as u128);
    let denominator = total_weight as u128 * 1_000_000;
    numerator.div_ceil(denominator) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// COURSE.md, H3: keys D0..D6 at 100, 200, ..., 700 on a ring with nodes
    /// at 400, 600 and 900.
    fn course_ring() -> HashRing {
        HashRing::from_points(vec![(400, 0), (600, 1), (900, 2)], 3).unwrap()
    }

    #[test]
    fn course_example_plain_consistent_hashing() {
        let ring = course_ring();
        let owners: Vec<usize> = (0..7).map(|k| ring.successor(100 * (k + 1))).collect();
        // D0-D3 go to the node at 400 (D3 sits on it), D4-D5 to 600, D6 to 900.
        assert_eq!(owners, vec![0, 0, 0, 0, 1, 1, 2]);
        // Past the last point the ring wraps to the first.
        assert_eq!(ring.successor(950), 0);
    }

    #[test]
    fn course_example_with_bounded_loads() {
        let ring = course_ring();
        // 7 keys over 3 equal nodes with ε = 0.25: cap ⌈1.25 · 7/3⌉ = 3.
        let cap = bounded_cap(7, 1, 3, 250_000);
        assert_eq!(cap, 3);
        let caps = vec![cap; 3];
        let mut loads = vec![0; 3];
        let mut owners = Vec::new();
        for k in 0..7 {
            let node = ring.successor_bounded(100 * (k + 1), &loads, &caps).unwrap();
            loads[node] += 1;
            owners.push(node);
        }
        // D3 finds the node at 400 full and continues clockwise to 600; no node exceeds 3.
        assert_eq!(owners, vec![0, 0, 0, 1, 1, 1, 2]);
        assert_eq!(loads, vec![3, 3, 1]);
    }

    #[test]
    fn removing_a_node_moves_only_its_items() {
        let names = ["a", "b", "c", "d"];
        let ring = HashRing::new(&names, &[64; 4]).unwrap();
        let smaller = HashRing::new(&names[..3], &[64; 3]).unwrap();
        let items = 10_000u64;
        let mut moved = 0;
        for i in 0..items {
            let position = xxh3_64_with_seed(&i.to_be_bytes(), 1);
            let before = ring.successor(position);
            let after = smaller.successor(position);
            if before != 3 {
                assert_eq!(before, after, "an item not on the removed node moved");
            } else {
                moved += 1;
            }
        }
        // About a quarter of the items were on d.
        assert!((1_800..=3_200).contains(&moved), "{moved} of {items} moved");
    }

    #[test]
    fn weights_set_shares() {
        let ring = HashRing::new(&["small", "big"], &[100, 300]).unwrap();
        let mut counts = [0u32; 2];
        for i in 0..40_000u64 {
            counts[ring.successor(xxh3_64_with_seed(&i.to_be_bytes(), 2))] += 1;
        }
        let share = f64::from(counts[1]) / 40_000.0;
        assert!(
            (0.68..=0.82).contains(&share),
            "the 3x node took {share:.3} of the items"
        );
    }

    #[test]
    fn walk_distinct_visits_each_node_once() {
        let ring = HashRing::new(&["a", "b", "c"], &[50, 50, 50]).unwrap();
        let mut visited: Vec<usize> = ring.walk_distinct(12_345).collect();
        assert_eq!(visited.len(), 3);
        visited.sort();
        assert_eq!(visited, vec![0, 1, 2]);
    }

    #[test]
    fn full_ring_has_no_successor_with_room() {
        let ring = course_ring();
        assert_eq!(ring.successor_bounded(100, &[1, 1, 1], &[1, 1, 1]), None);
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(HashRing::from_points(Vec::new(), 0).unwrap_err(), RingError::Empty);
        let too_many = (RING_POINTS_MAX / 2 + 1) as u32;
        assert!(matches!(
            HashRing::new(&["a", "b"], &[too_many, too_many]),
            Err(RingError::TooManyPoints { .. })
        ));
    }

    #[test]
    fn bounded_cap_rounds_up() {
        assert_eq!(bounded_cap(96, 1, 5, 100_000), 22); // ⌈1.1 · 19.2⌉
        assert_eq!(bounded_cap(96, 1, 5, 0), 20); // ⌈19.2⌉
        assert_eq!(bounded_cap(10, 2, 4, 0), 5);
    }
}
