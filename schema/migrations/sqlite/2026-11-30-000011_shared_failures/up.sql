-- Failure counts of unauthenticated attempts shared by every replica (issue 17), so that a
-- second replica does not double an attacker's budget. One row per limiter ("auth.login:account")
-- and key (an account, an address, a device id). An attempt whose outcome is not known yet is
-- counted in `failures` up front and in `in_flight`; a success gives it back, so
-- `failures - in_flight` are the settled failures of the window that ends at `window_ends`.
-- Only PostgreSQL servers use it; SQLite is one process, whose counts stay in its memory.
CREATE TABLE failure_counts (
    limiter     TEXT NOT NULL,
    subject     TEXT NOT NULL,
    failures    INTEGER NOT NULL,
    in_flight   INTEGER NOT NULL,
    window_ends TIMESTAMP NOT NULL,
    PRIMARY KEY (limiter, subject)
);
-- The leader deletes rows whose window has passed.
CREATE INDEX failure_counts_window_ends_idx ON failure_counts (window_ends);
