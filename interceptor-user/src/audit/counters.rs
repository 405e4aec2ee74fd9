//! The kernel's per-service connection counters as the audit log records them: cumulative
//! across pin generations.
//!
//! The eBPF counters (`ICPT_COUNTERS`, per-CPU, summed by `ebpf::read_counters`) start at zero
//! whenever a new pin generation is attached (another agent build) or the pins are removed and
//! re-created. The store keeps, per service, the generation it last saw, the total carried
//! from earlier generations (`base`) and the last values read (`last`); a new generation or a
//! value that went down moves `last` into `base`. Checkpoints record `base + current`.
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

/// Counter values of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values {
    pub steered: u64,
    pub refused: u64,
    pub local: u64,
    pub upstream: u64,
}

impl Values {
    fn add(self, o: Values) -> Values {
        Values {
            steered: self.steered + o.steered,
            refused: self.refused + o.refused,
            local: self.local + o.local,
            upstream: self.upstream + o.upstream,
        }
    }
    fn any_below(self, o: Values) -> bool {
        self.steered < o.steered
            || self.refused < o.refused
            || self.local < o.local
            || self.upstream < o.upstream
    }

    /// `steered=1 refused=2 local=3 upstream=4`.
    pub fn text(&self) -> String {
        format!(
            "steered={} refused={} local={} upstream={}",
            self.steered, self.refused, self.local, self.upstream
        )
    }

    pub fn parse(s: &str) -> Option<Values> {
        let mut v = Values::default();
        for kv in s.split_whitespace() {
            let (k, n) = kv.split_once('=')?;
            let n: u64 = n.parse().ok()?;
            match k {
                "steered" => v.steered = n,
                "refused" => v.refused = n,
                "local" => v.local = n,
                "upstream" => v.upstream = n,
                _ => return None,
            }
        }
        Some(v)
    }
}

impl From<interceptor_common::Counters> for Values {
    fn from(c: interceptor_common::Counters) -> Values {
        Values {
            steered: c.steered,
            refused: c.refused,
            local: c.local_redirects,
            upstream: c.upstream,
        }
    }
}

/// What the kernel says now: the pin generation and each service's counters.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub generation: String,
    pub services: Vec<(String, Values)>,
}

/// Reads the counters of the generation pinned under `pin_root` for `services` (by slot).
pub fn read(pin_root: &std::path::Path, services: &[String]) -> Option<Snapshot> {
    let dir = crate::ebpf::current_generation(pin_root)?;
    let c = crate::ebpf::read_counters(&dir, services.len()).ok()?;
    // The generation directory's name plus its inode: re-created pins get a new inode.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).ok()?);
    Some(Snapshot {
        generation: format!("{}#{ino}", dir.file_name()?.to_string_lossy()),
        services: services
            .iter()
            .cloned()
            .zip(c.into_iter().map(Values::from))
            .collect(),
    })
}

/// Folds a snapshot into the carried state; returns the cumulative values per service.
pub fn carry(conn: &Connection, snap: &Snapshot) -> rusqlite::Result<Vec<(String, Values)>> {
    let mut out = Vec::new();
    for (service, now) in &snap.services {
        let prev: Option<(String, String, String)> = conn
            .query_row(
                "SELECT generation, base, last FROM counter_state WHERE service = ?1",
                [service],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let base = match &prev {
            Some((g, b, l)) => {
                let b: Values = serde_json::from_str(b).unwrap_or_default();
                let l: Values = serde_json::from_str(l).unwrap_or_default();
                if *g != snap.generation || now.any_below(l) {
                    b.add(l)
                } else {
                    b
                }
            }
            None => Values::default(),
        };
        conn.execute(
            "INSERT INTO counter_state (service, generation, base, last) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(service) DO UPDATE SET generation = ?2, base = ?3, last = ?4",
            params![
                service,
                snap.generation,
                serde_json::to_string(&base).unwrap_or_default(),
                serde_json::to_string(now).unwrap_or_default()
            ],
        )?;
        out.push((service.clone(), base.add(*now)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_across_generations_and_resets() {
        let dir = crate::audit::store::tests::tmpdb("counters");
        let w = crate::audit::store::Writer::open(&dir.1).unwrap();
        let c = w.conn();
        let snap = |g: &str, s: u64| Snapshot {
            generation: g.into(),
            services: vec![(
                "crm".into(),
                Values {
                    steered: s,
                    ..Default::default()
                },
            )],
        };
        assert_eq!(carry(c, &snap("a", 5)).unwrap()[0].1.steered, 5);
        assert_eq!(carry(c, &snap("a", 9)).unwrap()[0].1.steered, 9);
        // New generation: starts at zero, the 9 are carried.
        assert_eq!(carry(c, &snap("b", 2)).unwrap()[0].1.steered, 11);
        assert_eq!(carry(c, &snap("b", 4)).unwrap()[0].1.steered, 13);
        // Same name, counters went down (pins re-created): carried too.
        assert_eq!(carry(c, &snap("b", 1)).unwrap()[0].1.steered, 14);
        let v = Values {
            steered: 1,
            refused: 2,
            local: 3,
            upstream: 4,
        };
        assert_eq!(Values::parse(&v.text()), Some(v));
    }
}
