-- The reads polysem runs: each block is one SELECT with named parameters ($name) and becomes a method of
-- store.reads (and of Statements(conn)), e.g. store.reads.class_images(split="train", class_id=3, limit=100);
-- store.run("class_images", ...) is the same call by name. The mark after a block's name says what it returns:
--   no mark  rows, as a pyarrow.Table          (class_list: store.reads.class_list() -> Table)
--   ^        one row as a dict, None for none  (run_by_id^: store.reads.run_by_id(run_id=...) -> dict | None)
--   $        one value: the first column of the first row, None for no row (class_count$ -> int)
-- Writes ('!', '*!') belong in records.sql: these run on the store's read-only connection.

-- name: class_list
-- Every class of the store in id order: class_id, folder, name, wnid, logit.
SELECT class_id, folder, name, wnid, logit FROM classes ORDER BY class_id;

-- name: class_counts
-- Every class with its stored images in each split of the store: class_id, folder, name, wnid, logit, n_<split>...
WITH counts AS (
    PIVOT (SELECT target, 'n_' || split AS split FROM layer_samples) ON split USING count(*) GROUP BY target
)
SELECT c.class_id, c.folder, c.name, c.wnid, c.logit, coalesce(COLUMNS(lambda col: col LIKE 'n\_%' ESCAPE '\'), 0)
FROM classes c LEFT JOIN counts ON counts.target = c.class_id
ORDER BY c.class_id;

-- name: class_count$
-- The number of classes.
SELECT count(*) AS n FROM classes;

-- name: split_images$
-- The number of stored images of one split.
SELECT count(*) AS n FROM layer_samples WHERE split = $split;

-- name: attributed_images$
-- The number of stored images of one split whose attribution is not zero on every channel.
SELECT count(*) AS n FROM layer_samples WHERE split = $split AND list_max(list_transform(attribution, lambda x: abs(x))) > 0;

-- name: relevant_pair_count^
-- The (channel, class) pairs relevant at $tau and $p (Ineq. 2) in one split, and the classes with images there.
SELECT (SELECT count(*) FROM relevant_pairs(tau := $tau, p := $p, split_name := $split,
                                            correct_only := $correct_only)) AS relevant,
       (SELECT count(DISTINCT target) FROM layer_samples WHERE split = $split) AS classes;

-- name: misshapen_rows^
-- Rows of one split at the chosen layer that ingest cannot have written, counted by what is wrong: an attribution
-- of other than $channels values, input sums of other than $input_len, a target no class has (or none), a path
-- that is not $root/... with no empty, '.' or '..' part (layout.image_path_in_root; $root NULL: not checked, a
-- split of a Dataset, whose rows name items); first_path is the first such path.
WITH rows AS (
    SELECT attribution, input_sum, target, path,
           $root IS NOT NULL AND (path IS NULL OR NOT starts_with(path, $root || '/')
               OR list_has_any(string_split(substr(path, length($root) + 2), '/'), ['', '.', '..'])) AS outside
    FROM layer_samples WHERE split = $split
)
SELECT count(*) FILTER (WHERE len(attribution) IS DISTINCT FROM $channels) AS attribution,
       count(*) FILTER (WHERE len(input_sum) IS DISTINCT FROM $input_len) AS input_sum,
       count(*) FILTER (WHERE target IS NULL OR target NOT IN (SELECT class_id FROM classes)) AS target,
       count(*) FILTER (WHERE outside) AS path,
       min(path) FILTER (WHERE outside) AS first_path
FROM rows;

-- name: repeated_image^
-- One image that a split holds more than once (a copied part), or none: image_id, path, n.
SELECT image_id, any_value(path) AS path, count(*) AS n FROM layer_samples WHERE split = $split
GROUP BY image_id HAVING count(*) > 1 ORDER BY image_id LIMIT 1;

-- name: layer_image_counts
-- Stored images per layer and split (every layer's: `samples`, its image ids only): layer, split, n.
SELECT layer, split, count(*) AS n FROM samples GROUP BY layer, split ORDER BY layer, split;

-- name: split_summary
-- Images per split: split, n_images, n_errors, n_classes (the split_counts view).
SELECT * FROM split_counts;

-- name: class_sizes
-- Stored images per class of one split: target, n.
SELECT target, count(*) AS n FROM layer_samples WHERE split = $split GROUP BY target;

-- name: class_images
-- One class's images of a split, by image id (at most $limit): image_id, path, target.
SELECT image_id, path, target FROM layer_samples WHERE split = $split AND target = $class_id ORDER BY image_id LIMIT $limit;

-- name: spread_images
-- $limit images of a split spread over its classes (a hash order): image_id, path, target.
SELECT image_id, path, target FROM layer_samples WHERE split = $split ORDER BY hash(image_id), image_id LIMIT $limit;

-- name: check_images
-- The images the disentangle check runs: those of $classes first, then the rest by id (at most $limit).
SELECT image_id, path, target FROM layer_samples WHERE split = $split
ORDER BY list_contains($classes, target) DESC, image_id LIMIT $limit;

-- name: relevant_classes
-- The classes a channel is relevant for (Ineq. 2 at $tau, $p on $split), by class id.
SELECT class_id FROM relevant_pairs(tau := $tau, p := $p, split_name := $split) WHERE channel = $channel
ORDER BY class_id;

-- name: relevant_classes_among
-- relevant_classes restricted to $classes: the filter lets DuckDB read only their images.
SELECT class_id FROM relevant_pairs(tau := $tau, p := $p, split_name := $split)
WHERE channel = $channel AND list_contains($classes, class_id) ORDER BY class_id;

-- name: concept_arv_of$
-- The ARV (a list of C_{l-1} doubles) of a channel for the union of $classes' images of $split.
SELECT arv FROM concept_arv($channel, $classes, split_name := $split);

-- name: unit_arv_cosines
-- Cosines of the ARVs of $classes under one weight row (a new channel of a run): class1, class2, cosine.
SELECT class1, class2, cosine FROM weight_arv_cosine($weight, $classes, split_name := $split);

-- name: out_channels$
-- The number of output channels of the layer of interest.
SELECT out_channels FROM layer_info;

-- name: run_by_id^
-- One run's row of `runs`, or none when the id is unknown.
SELECT * FROM runs WHERE run_id = $run_id;

-- name: runs_of_group
-- Every run of one disentangled model (one group), by run id.
SELECT * FROM runs WHERE group_id = $group_id ORDER BY run_id;

-- name: run_artifacts
-- Every run's id and the store path of its model: run_id, artifact.
SELECT run_id, artifact FROM runs ORDER BY run_id;

-- name: run_count$
-- The number of runs.
SELECT count(*) AS n FROM runs;

-- name: run_summaries
-- Every run with its evaluation and verification (the run_summary view).
SELECT * FROM run_summary;

-- name: run_record^
-- One run in full: its row of `runs` and of run_summary, or none when the id is unknown.
SELECT r.*, s.* EXCLUDE (run_id, created_at, channel, concepts, rho, objective, max_logit_diff, warnings)
FROM runs r JOIN run_summary s USING (run_id) WHERE run_id = $run_id;

-- name: evaluation_of_run
-- The evaluation_summary macro for one run at $tau on $split by $selection ('ineq2', or 'authors' with the per-image clamped sums $image_ids, $channel_sums, $totals): per concept, images and fractions.
SELECT * FROM evaluation_summary($run_id, tau := $tau, split_name := $split, selection := $selection,
                                 image_ids := $image_ids, channel_sums := $channel_sums, totals := $totals);

-- name: selected_activations_of_run
-- selected_activations for one run on $split: run_activations with relative_attribution by $selection.
SELECT * FROM selected_activations($run_id, split_name := $split, selection := $selection, image_ids := $image_ids,
                                   channel_sums := $channel_sums, totals := $totals);

-- name: top_images_of_run
-- The unit_top_images macro for one run: each unit's $limit most activating images of $split over every class.
SELECT * FROM unit_top_images($run_id, $limit, split_name := $split);

-- name: top_classes_of_run
-- The unit_class_histogram macro for one run: the classes of each unit's $limit most activating images of $split.
SELECT * FROM unit_class_histogram($run_id, $limit, split_name := $split);

-- name: latest_visualizations
-- The newest visualisation of a run (or, with $run_id NULL, of $channel of the stored model's layer polysem_layer): one row per unit and
-- seed (a call with several seeds records them at one created_at).
SELECT * FROM visualizations
WHERE run_id IS NOT DISTINCT FROM $run_id AND ($channel IS NULL OR channel = $channel)
  AND layer IS NOT DISTINCT FROM getvariable('polysem_layer')
QUALIFY created_at = max(created_at) OVER ()
ORDER BY list_position(['original', 'c1', 'c2', 'r'], unit), unit, seed;

-- name: screen_pairs
-- polysemantic_pairs at the given settings, lowest cosine first, at most $limit rows.
SELECT * FROM polysemantic_pairs(tau := $tau, p := $p, gamma := $gamma, split_name := $split,
                                 correct_only := $correct_only)
LIMIT $limit;

-- name: screen_cosines
-- arv_cosine at the given settings: every class pair relevant for a common channel, with its ARV cosine.
SELECT * FROM arv_cosine(tau := $tau, p := $p, split_name := $split, correct_only := $correct_only);

-- name: class_pairs_sharing_a_channel
-- Distinct class pairs (class1 < class2) relevant for at least one common channel, with their wnids.
WITH rel AS (SELECT * FROM relevant_pairs(tau := $tau, p := $p, split_name := $split))
SELECT DISTINCT a.class_id AS class1, b.class_id AS class2, c1.wnid AS wnid1, c2.wnid AS wnid2
FROM rel a JOIN rel b ON a.channel = b.channel AND a.class_id < b.class_id
JOIN classes c1 ON c1.class_id = a.class_id
JOIN classes c2 ON c2.class_id = b.class_id
ORDER BY class1, class2;

-- name: wordnet_points
-- (cosine, path_similarity, class1, class2) of every (channel, class pair) whose pair has a WordNet similarity.
SELECT c.cosine, s.path_similarity, c.class1, c.class2 FROM arv_cosine(tau := $tau, p := $p) c
JOIN class_similarity s USING (class1, class2) WHERE s.path_similarity IS NOT NULL ORDER BY ALL;

-- name: store_meta_rows
-- Every key and JSON value of store_meta.
SELECT key, value FROM store_meta ORDER BY key;

-- name: parquet_image_ids
-- The image ids in Parquet files ($files: a glob or list), without the catalog (ingest's resume).
SELECT image_id FROM read_parquet($files, hive_partitioning = false);

-- name: parquet_class_sizes
-- Rows per class in Parquet files ($files), by class (compaction's plan): target, n.
SELECT target, count(*) AS n FROM read_parquet($files, hive_partitioning = false) GROUP BY target ORDER BY target;

-- name: parquet_repeated_images
-- Images that more than one of the Parquet files ($files) hold, with the files holding each (check): image_id, files.
SELECT image_id, list(DISTINCT filename ORDER BY filename) AS files
FROM read_parquet($files, filename = true, hive_partitioning = false) GROUP BY image_id HAVING count(*) > 1 ORDER BY image_id;

-- name: parquet_class_range
-- The rows of classes $first..$last in Parquet files ($files), ordered by class and image id, positive_sum filled (compaction).
SELECT * EXCLUDE (filename) FROM sample_rows($files) WHERE target BETWEEN $first AND $last ORDER BY target, image_id;

-- name: meta_value$
-- One store_meta value as text, or none when the key is absent.
SELECT value ->> '$' AS value FROM store_meta WHERE key = $key;

-- name: format_keys
-- The keys that say a catalog's store format (schema_version; format in format 2) with their values.
SELECT key, value ->> '$' AS value FROM store_meta WHERE key IN ('schema_version', 'format');

-- name: verdicts_of
-- unit_verdicts for one verification's facts (before they are recorded).
SELECT * FROM unit_verdicts($concepts, $relevant_classes, $min_cosines, $gamma);

-- name: run_verdicts
-- The recorded verification's verdict of each new unit of a run (none before `polysem verify`).
SELECT * FROM verification_verdicts WHERE run_id = $run_id ORDER BY concept;

-- name: verification_of_run^
-- A run's recorded verification settings: tau, p, gamma, n_images, verified_at, or none before `polysem verify`.
SELECT tau, p, gamma, n_images, verified_at FROM verifications WHERE run_id = $run_id;

-- name: evaluation_tau_of_run^
-- The tau and selection of a run's recorded evaluation, or none before `polysem evaluate`.
SELECT any_value(tau) AS tau, any_value(selection) AS selection FROM evaluations WHERE run_id = $run_id
HAVING count(*) > 0;

-- name: sweep
-- screen_sweep over a grid of settings (one scan of the attributions).
SELECT * FROM screen_sweep($taus, $ps, $gammas, split_name := $split, correct_only := $correct_only);

-- name: run_list
-- Every run of `runs`, by run id.
SELECT * FROM runs ORDER BY run_id;

-- name: catalog_tables
-- The base tables of the attached database $database with the statement that creates each (columns, types, defaults and constraints): a prepared catalog copy takes another catalog's rows only from the same tables.
SELECT schema_name, table_name, sql FROM duckdb_tables()
WHERE database_name = $database AND NOT temporary ORDER BY ALL;

-- name: catalog_objects
-- Every view, macro ('macro' or 'table macro', once however many overloads it has; only where $macros, as listing them costs a scan of every DuckDB function, about 10 ms), sequence, index, type and schema but main of the attached database $database, and every comment on a table, column, view or macro of it ('comment', named by its object) (kind, schema_name, name).
WITH macros AS MATERIALIZED (
    SELECT function_type, schema_name, function_name, comment FROM duckdb_functions()
    WHERE $macros AND database_name = $database AND NOT internal AND function_type IN ('macro', 'table_macro'))
SELECT DISTINCT * FROM (
    SELECT 'view' AS kind, schema_name, view_name AS name FROM duckdb_views()
    WHERE database_name = $database AND NOT internal
    UNION ALL SELECT replace(function_type, '_', ' '), schema_name, function_name FROM macros
    UNION ALL SELECT 'comment', schema_name, function_name FROM macros WHERE comment IS NOT NULL
    UNION ALL SELECT 'comment', schema_name, view_name FROM duckdb_views()
    WHERE database_name = $database AND NOT internal AND comment IS NOT NULL
    UNION ALL SELECT 'comment', schema_name, table_name FROM duckdb_tables()
    WHERE database_name = $database AND comment IS NOT NULL
    UNION ALL SELECT 'comment', schema_name, table_name || '.' || column_name FROM duckdb_columns()
    WHERE database_name = $database AND comment IS NOT NULL
    UNION ALL SELECT 'sequence', schema_name, sequence_name FROM duckdb_sequences() WHERE database_name = $database
    UNION ALL SELECT 'index', schema_name, index_name FROM duckdb_indexes() WHERE database_name = $database
    UNION ALL SELECT 'type', schema_name, type_name FROM duckdb_types() WHERE database_name = $database AND NOT internal
    UNION ALL SELECT 'schema', schema_name, schema_name FROM duckdb_schemas()
    WHERE database_name = $database AND NOT internal AND schema_name <> 'main')
ORDER BY ALL;
