//! Downsampling a metric's history for a chart, in SQL.
//!
//! A chart of five runs of 100,000 points each needs a few thousand points, so
//! [`TrackingStore::metric_sample`](crate::TrackingStore::metric_sample) never loads a whole
//! history. When a step range holds more points than asked for, it is cut into equal step
//! buckets and each bucket keeps four whole rows: its first and its last point, and its lowest
//! and highest value (the M4 rule). The line drawn through them has the extent of the full
//! history at every bucket, so spikes survive and the first and last points of the range are
//! always there. The database picks the rows: for each bucket two index seeks (first, last) and
//! one pass over the bucket's index entries (lowest, highest), so a sample reads each point of
//! the range at most twice and sends back at most `max` rows.

use crate::tracking::Dialect;

/// Rows a bucket keeps: first, last, lowest and highest.
pub(crate) const ROWS_PER_BUCKET: u32 = 4;

/// The inclusive step ranges of the buckets that cut `lo..=hi` for a sample of at most `max`
/// points: `max / 4` buckets of equal width (at least one, and never narrower than one step).
pub(crate) fn bucket_bounds(lo: i64, hi: i64, max: u32) -> Vec<(i64, i64)> {
    if hi < lo {
        return Vec::new();
    }
    let buckets = i128::from((max / ROWS_PER_BUCKET).max(1));
    let span = i128::from(hi) - i128::from(lo) + 1;
    let width = (span + buckets - 1) / buckets;
    let mut bounds = Vec::new();
    let mut start = i128::from(lo);
    while start <= i128::from(hi) {
        let end = (start + width - 1).min(i128::from(hi));
        // Both ends lie in lo..=hi, so they fit in an i64.
        bounds.push((start as i64, end as i64));
        start = end + 1;
    }
    bounds
}

/// The query that picks each bucket's rows of one run's metric (`$1` run id, `$2` key), in
/// step, timestamp, value order. The bounds are integers written into the text: a few hundred
/// of them as bind parameters would cost more to bind than the query takes.
///
/// SQLite has no `LATERAL`, so there each pick is a correlated scalar subquery returning the
/// row's `rowid`; PostgreSQL joins each bucket to its four picks laterally. Both read the
/// primary key index `(run_id, key, step, ...)`, which covers every column.
pub(crate) fn sample_sql(dialect: Dialect, bounds: &[(i64, i64)]) -> String {
    let values: Vec<String> = bounds
        .iter()
        .map(|(lo, hi)| format!("({lo}, {hi})"))
        .collect();
    let buckets = format!("WITH k (lo, hi) AS (VALUES {})", values.join(", "));
    let orders = [
        "step, timestamp, value, is_nan",
        "step DESC, timestamp DESC, value DESC, is_nan DESC",
        "is_nan, value, step, timestamp",
        "is_nan, value DESC, step, timestamp",
    ];
    let bucket_rows = "FROM tracking_metrics \
                       WHERE run_id = $1 AND key = $2 AND step BETWEEN k.lo AND k.hi";
    match dialect {
        Dialect::Sqlite => {
            let picks: Vec<String> = orders
                .iter()
                .map(|order| {
                    format!("SELECT (SELECT rowid {bucket_rows} ORDER BY {order} LIMIT 1) FROM k")
                })
                .collect();
            format!(
                "{buckets} SELECT run_id, key, value, is_nan, timestamp, step FROM tracking_metrics \
                 WHERE rowid IN ({}) ORDER BY step, timestamp, value, is_nan",
                picks.join(" UNION ALL ")
            )
        }
        Dialect::Postgres => {
            let picks: Vec<String> = orders
                .iter()
                .map(|order| {
                    format!(
                        "(SELECT run_id, key, value, is_nan, timestamp, step {bucket_rows} \
                         ORDER BY {order} LIMIT 1)"
                    )
                })
                .collect();
            format!(
                "{buckets} SELECT p.run_id, p.key, p.value, p.is_nan, p.timestamp, p.step \
                 FROM k CROSS JOIN LATERAL ({}) AS p ORDER BY p.step, p.timestamp, p.value, p.is_nan",
                picks.join(" UNION ")
            )
        }
    }
}

/// At most `max` of a sample's rows, keeping its first and last: a sample of fewer than four
/// points cannot hold a whole bucket. One point is the last, as MLflow answers.
pub(crate) fn keep_ends<T>(mut rows: Vec<T>, max: usize) -> Vec<T> {
    if rows.len() <= max {
        return rows;
    }
    let last = rows.pop();
    rows.truncate(max.saturating_sub(1));
    rows.extend(last);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cut_the_range_into_equal_widths() {
        assert_eq!(
            bucket_bounds(0, 99, 40),
            vec![
                (0, 9),
                (10, 19),
                (20, 29),
                (30, 39),
                (40, 49),
                (50, 59),
                (60, 69),
                (70, 79),
                (80, 89),
                (90, 99)
            ]
        );
        // 100,000 steps in 2,500 points: 625 buckets of 160 steps.
        let bounds = bucket_bounds(0, 99_999, 2500);
        assert_eq!(bounds.len(), 625);
        assert!(bounds.iter().all(|(lo, hi)| hi - lo + 1 == 160));
        // The last bucket is cut short at the last step.
        assert_eq!(bucket_bounds(5, 15, 12), vec![(5, 8), (9, 12), (13, 15)]);
    }

    #[test]
    fn buckets_are_never_narrower_than_a_step() {
        assert_eq!(bucket_bounds(3, 5, 2500), vec![(3, 3), (4, 4), (5, 5)]);
        assert_eq!(bucket_bounds(7, 7, 2500), vec![(7, 7)]);
        assert_eq!(bucket_bounds(0, 9, 1), vec![(0, 9)]);
        assert!(bucket_bounds(1, 0, 100).is_empty());
    }

    #[test]
    fn buckets_span_the_whole_step_range_without_overflow() {
        let bounds = bucket_bounds(i64::MIN, i64::MAX, 8);
        assert_eq!(bounds.len(), 2);
        assert_eq!(bounds[0], (i64::MIN, -1));
        assert_eq!(bounds[1], (0, i64::MAX));
        let bounds = bucket_bounds(i64::MAX - 2, i64::MAX, 2500);
        assert_eq!(bounds.last(), Some(&(i64::MAX, i64::MAX)));
    }

    #[test]
    fn bounds_are_written_as_integers_in_both_dialects() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let sql = sample_sql(dialect, &[(-5, 4), (5, 14)]);
            assert!(
                sql.starts_with("WITH k (lo, hi) AS (VALUES (-5, 4), (5, 14))"),
                "{sql}"
            );
            assert_eq!(sql.matches("LIMIT 1").count(), 4, "{sql}");
        }
    }

    #[test]
    fn trimming_keeps_the_first_and_the_last() {
        assert_eq!(keep_ends(vec![1, 2, 3, 4], 4), vec![1, 2, 3, 4]);
        assert_eq!(keep_ends(vec![1, 2, 3, 4], 3), vec![1, 2, 4]);
        assert_eq!(keep_ends(vec![1, 2, 3, 4], 2), vec![1, 4]);
        assert_eq!(keep_ends(vec![1, 2, 3, 4], 1), vec![4]);
    }
}
