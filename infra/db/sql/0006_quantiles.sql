-- Percentiles and mergeable quantile sketches in the rollups (hourly and daily windows).
-- Per metric: p50, p90, p95 and p99 of the window's 1 s samples, within 1 % of the exact
-- values, and the sketch they come from as two arrays of the same length, bucket keys
-- (ascending) and the count of samples in each (`schemas/sketch.py`; the sink's decoding
-- refuses a sketch of any other shape). Sketches of any set of rows merge in plain SQL:
-- unnest the two arrays together and sum the counts per key (`sinks/read.py`).
-- NULL in rows written before this migration, or whose window the stream worker restored
-- from state without sketches: their percentiles are unknown, never guessed.
-- One column per statement, nullable and without a default: what TimescaleDB allows on a
-- hypertable with compression enabled.

ALTER TABLE metrics_hourly ADD COLUMN cpu_usage_p50 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN cpu_usage_p90 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN cpu_usage_p95 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN cpu_usage_p99 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN memory_usage_p50 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN memory_usage_p90 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN memory_usage_p95 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN memory_usage_p99 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN disk_usage_p50 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN disk_usage_p90 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN disk_usage_p95 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN disk_usage_p99 DOUBLE PRECISION;
ALTER TABLE metrics_hourly ADD COLUMN cpu_usage_sketch_keys INTEGER[];
ALTER TABLE metrics_hourly ADD COLUMN cpu_usage_sketch_counts INTEGER[];
ALTER TABLE metrics_hourly ADD COLUMN memory_usage_sketch_keys INTEGER[];
ALTER TABLE metrics_hourly ADD COLUMN memory_usage_sketch_counts INTEGER[];
ALTER TABLE metrics_hourly ADD COLUMN disk_usage_sketch_keys INTEGER[];
ALTER TABLE metrics_hourly ADD COLUMN disk_usage_sketch_counts INTEGER[];

ALTER TABLE metrics_daily ADD COLUMN cpu_usage_p50 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN cpu_usage_p90 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN cpu_usage_p95 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN cpu_usage_p99 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN memory_usage_p50 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN memory_usage_p90 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN memory_usage_p95 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN memory_usage_p99 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN disk_usage_p50 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN disk_usage_p90 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN disk_usage_p95 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN disk_usage_p99 DOUBLE PRECISION;
ALTER TABLE metrics_daily ADD COLUMN cpu_usage_sketch_keys INTEGER[];
ALTER TABLE metrics_daily ADD COLUMN cpu_usage_sketch_counts INTEGER[];
ALTER TABLE metrics_daily ADD COLUMN memory_usage_sketch_keys INTEGER[];
ALTER TABLE metrics_daily ADD COLUMN memory_usage_sketch_counts INTEGER[];
ALTER TABLE metrics_daily ADD COLUMN disk_usage_sketch_keys INTEGER[];
ALTER TABLE metrics_daily ADD COLUMN disk_usage_sketch_counts INTEGER[];
