-- name: positive_sum
-- Scalar: the sum of the positive entries of an image's attribution vector (0 when none is positive), the denominator of Ineq. 2.
CREATE OR REPLACE MACRO positive_sum(attribution) AS
coalesce(list_sum(list_filter(attribution, lambda a: a > 0)), 0);

-- name: sample_rows
-- The rows of samples' Parquet files (`files`: a glob or list) with their filename, positive_sum filled: compaction stores it (format 6); for an ingest part or a file compacted before format 6 it is computed here, by the same macro, so the value is the same either way.
CREATE OR REPLACE MACRO sample_rows(files) AS TABLE
SELECT * REPLACE (coalesce(positive_sum, positive_sum(attribution)) AS positive_sum)
FROM (
    SELECT * FROM read_parquet(files, union_by_name = true, filename = true, hive_partitioning = false)
    UNION ALL BY NAME
    SELECT NULL::DOUBLE AS positive_sum, NULL::VARCHAR AS filename WHERE false  -- the columns, for stores whose files all predate positive_sum
);

-- name: samples
-- One row per ingested image and layer: image_id, split, path (a Dataset's item: <split>[<index>], its image_id the index), target (class id), prediction (class id of the argmax logit, NULL when that logit belongs to no class of the store), predicted_logit (the argmax), target_logit (the logit of the target class), attribution (C_l floats), input_sum (C_{l-1}*k*k floats), positions (output positions of layer l that count), positive_sum (the sum of attribution's positive entries, Ineq. 2's denominator), layer (the layer's dotted name). A layer's rows live in samples/<split>/layer=<name>/, so a filter on layer reads that layer's files only; files of a store made before layers (samples/<split>/*.parquet) hold its first layer (the variable polysem_first_layer, which polysem sets on every connection).
CREATE OR REPLACE VIEW samples AS
SELECT * EXCLUDE (filename),
       coalesce(nullif(regexp_extract(filename, 'samples/[^/]+/layer=([^/]+)/[^/]+$', 1), ''),
                getvariable('polysem_first_layer')) AS layer
FROM sample_rows('samples/**/*.parquet');

-- name: layer_samples
-- The rows of samples of the layer a command works on (the variable polysem_layer, which polysem sets on every connection: the layer chosen with --layer, else the store's first); every view and macro of the method reads this.
CREATE OR REPLACE VIEW layer_samples AS
SELECT * FROM samples WHERE layer = getvariable('polysem_layer');

-- name: ingest_errors
-- Images that could not be read or transformed and are still not stored: the latest attempt's reason per image (a later ingest retries them).
CREATE OR REPLACE VIEW ingest_errors AS
SELECT e.* FROM read_parquet('ingest_errors/*/*.parquet') e
ANTI JOIN layer_samples s ON s.split = e.split AND s.image_id = e.image_id
QUALIFY row_number() OVER (PARTITION BY e.split, e.image_id ORDER BY e.failed_at DESC) = 1;

-- name: classes
-- One row per class: class_id (ImageFolder index), folder, name, wnid (WordNet noun id or NULL), logit (the model output index of the class).
CREATE OR REPLACE VIEW classes AS
SELECT * FROM read_parquet('classes.parquet');

-- name: all_layer_weights
-- Every layer's weight, one row per output channel: layer, channel, weight (flattened in the order of input_sum: in, kh, kw), bias or NULL. The first layer's is layer_weights.parquet, every other's layer_weights-<layer>.parquet.
CREATE OR REPLACE VIEW all_layer_weights AS
SELECT * EXCLUDE (filename),
       coalesce(nullif(regexp_extract(filename, 'layer_weights-(.+)\.parquet$', 1), ''),
                getvariable('polysem_first_layer')) AS layer
FROM read_parquet('layer_weights*.parquet', filename = true, hive_partitioning = false);

-- name: layer_weights
-- The weight of the layer a command works on (polysem_layer), one row per output channel: channel, weight, bias.
CREATE OR REPLACE VIEW layer_weights AS
SELECT channel, weight, bias FROM all_layer_weights WHERE layer = getvariable('polysem_layer');

-- name: layers
-- Every layer of the store, the first first: name, shape (JSON: out_channels, in_channels, kernel_size, stride, padding, dilation, bias; a Linear's kind and positions).
CREATE OR REPLACE VIEW layers AS
SELECT (SELECT value ->> '$' FROM store_meta WHERE key = 'layer') AS name, value AS shape, 0 AS ordinal
FROM store_meta WHERE key = 'layer_shape'
UNION ALL
SELECT substr(key, length('layer_shape:') + 1) AS name, value AS shape,
       row_number() OVER (ORDER BY key) AS ordinal  -- the others by name, as `polysem info` lists them
FROM store_meta WHERE key LIKE 'layer\_shape:%' ESCAPE '\'
  AND substr(key, length('layer_shape:') + 1) <> (SELECT value ->> '$' FROM store_meta WHERE key = 'layer');

-- name: layer_info
-- The layer a command works on (polysem_layer) in one row: name, out_channels, in_channels, kernel_h, kernel_w and window (= kernel_h * kernel_w; 1 for a Linear).
CREATE OR REPLACE VIEW layer_info AS
SELECT
    name,
    (shape ->> 'out_channels')::INTEGER AS out_channels,
    (shape ->> 'in_channels')::INTEGER AS in_channels,
    (shape -> 'kernel_size' ->> 0)::INTEGER AS kernel_h,
    (shape -> 'kernel_size' ->> 1)::INTEGER AS kernel_w,
    kernel_h * kernel_w AS window
FROM layers WHERE name = getvariable('polysem_layer');

-- name: split_counts
-- Images per split: stored, unreadable, classes present.
CREATE OR REPLACE VIEW split_counts AS
SELECT split,
       count(*) AS n_images,
       (SELECT count(*) FROM ingest_errors e WHERE e.split = s.split) AS n_errors,
       count(DISTINCT target) AS n_classes
FROM layer_samples s
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
    failure      VARCHAR,
    layer        VARCHAR
);
