DROP INDEX failure_counts_window_ends_idx;
DROP TABLE failure_counts;
