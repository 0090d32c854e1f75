DROP INDEX cloud_sync_queue_state_next_idx;
DROP TABLE cloud_sync_queue;
DROP TABLE aggregated_batch_fixations;
DROP TABLE aggregated_pallets;
DROP TABLE aggregated_batches;
DROP TABLE aggregated_bottles;
