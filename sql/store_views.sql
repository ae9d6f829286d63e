-- name: positive_sum
-- Scalar: the sum of the positive entries of an image's attribution vector (0 when none is positive), the denominator of Ineq. 2.
CREATE OR REPLACE MACRO positive_sum(attribution) AS
coalesce(list_sum(list_filter(attribution, lambda a: a > 0)), 0);

-- name: sample_rows
-- The rows of samples' Parquet files (`files`: a glob or list) with positive_sum filled: compaction stores it (format 6); for an ingest part or a file compacted before format 6 it is computed here, by the same macro, so the value is the same either way.
CREATE OR REPLACE MACRO sample_rows(files) AS TABLE
SELECT * REPLACE (coalesce(positive_sum, positive_sum(attribution)) AS positive_sum)
FROM (
    SELECT * FROM read_parquet(files, union_by_name = true)
    UNION ALL BY NAME
    SELECT NULL::DOUBLE AS positive_sum WHERE false  -- the column, for stores whose files all predate it
);

-- name: samples
-- One row per ingested image: image_id, split, path (a Dataset's item: <split>[<index>], its image_id the index), target (class id), prediction (class id of the argmax logit, NULL when that logit belongs to no class of the store), predicted_logit (the argmax), target_logit (the logit of the target class), attribution (C_l floats), input_sum (C_{l-1}*k*k floats), positions (output positions of layer l), positive_sum (the sum of attribution's positive entries, Ineq. 2's denominator).
CREATE OR REPLACE VIEW samples AS
SELECT * FROM sample_rows('samples/*/*.parquet');

-- name: ingest_errors
-- Images that could not be read or transformed and are still not stored: the latest attempt's reason per image (a later ingest retries them).
CREATE OR REPLACE VIEW ingest_errors AS
SELECT e.* FROM read_parquet('ingest_errors/*/*.parquet') e
ANTI JOIN samples s ON s.split = e.split AND s.image_id = e.image_id
QUALIFY row_number() OVER (PARTITION BY e.split, e.image_id ORDER BY e.failed_at DESC) = 1;

-- name: classes
-- One row per class: class_id (ImageFolder index), folder, name, wnid (WordNet noun id or NULL), logit (the model output index of the class).
CREATE OR REPLACE VIEW classes AS
SELECT * FROM read_parquet('classes.parquet');

-- name: layer_weights
-- The layer's conv weight, one row per output channel, flattened in the order of input_sum (in, kh, kw); bias or NULL.
CREATE OR REPLACE VIEW layer_weights AS
SELECT * FROM read_parquet('layer_weights.parquet');

-- name: layer_info
-- The layer of interest in one row: name, out_channels, in_channels, kernel_h, kernel_w and window (= kernel_h * kernel_w).
CREATE OR REPLACE VIEW layer_info AS
WITH shape AS (SELECT value AS s FROM store_meta WHERE key = 'layer_shape')
SELECT
    (SELECT value ->> '$' FROM store_meta WHERE key = 'layer') AS name,
    (s ->> 'out_channels')::INTEGER AS out_channels,
    (s ->> 'in_channels')::INTEGER AS in_channels,
    (s -> 'kernel_size' ->> 0)::INTEGER AS kernel_h,
    (s -> 'kernel_size' ->> 1)::INTEGER AS kernel_w,
    kernel_h * kernel_w AS window
FROM shape;

-- name: split_counts
-- Images per split: stored, unreadable, classes present.
CREATE OR REPLACE VIEW split_counts AS
SELECT split,
       count(*) AS n_images,
       (SELECT count(*) FROM ingest_errors e WHERE e.split = s.split) AS n_errors,
       count(DISTINCT target) AS n_classes
FROM samples s
GROUP BY split
ORDER BY split;

-- name: visualizations
-- Feature visualisations (`polysem visualize`), one row per optimised image: run_id (NULL for a channel of the stored model), channel, unit (original, c1, c2, r), method, steps, size, seed, device, image (PNG path in the store; NULL when the unit's visualisation failed), the spatially summed activations of the original channel, c'1, c'2 and r on it (NULL without a run), selectivity (c_j: act(c'_j) over the largest act of the other new channels), seconds of optimisation, created_at, act_concepts (the activations of c'_1..c'_k: all of them when k > 2), failure (NULL, or why this unit has no picture: it never activated).
CREATE TABLE IF NOT EXISTS visualizations (
    run_id       VARCHAR,
    channel      INTEGER NOT NULL,
    unit         VARCHAR NOT NULL,
    method       VARCHAR NOT NULL,
    steps        INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    seed         BIGINT NOT NULL,
    device       VARCHAR NOT NULL,
    image        VARCHAR,
    act_original DOUBLE NOT NULL,
    act_c1       DOUBLE,
    act_c2       DOUBLE,
    act_r        DOUBLE,
    selectivity  DOUBLE,
    seconds      DOUBLE NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    act_concepts DOUBLE[],
    failure      VARCHAR
);
