-- The writes polysem runs (and the reads they need), each a method of the transaction Store.transaction()
-- yields, with named parameters ($name): tx.put_meta(key=..., value=...). The mark after a block's name says
-- what it is (reads are marked as in queries.sql: none for rows, '^' one row, '$' one value):
--   !   a write; returns nothing                                  (put_meta!: tx.put_meta(key=..., value=...))
--   *!  a write run once per row; the method takes a list of dicts of its parameters (insert_run*!: tx.insert_run(rows))
-- Every insert names its columns, so a store whose tables gained columns still takes them.

-- name: put_meta!
-- Set one store_meta key to a JSON value.
INSERT OR REPLACE INTO store_meta (key, value) VALUES ($key, $value::JSON);

-- name: known_runs$
-- How many of $run_ids are recorded already.
SELECT count(*) AS n FROM runs WHERE list_contains($run_ids, run_id);

-- name: referenced_artifacts
-- The artifacts that recorded runs name (artifact).
SELECT DISTINCT artifact FROM runs;

-- name: insert_run*!
-- One disentangled channel's run of $layer (a run recorded pending before layers were named: the first layer).
INSERT INTO runs (run_id, group_id, created_at, channel, concepts, rho, objective, sources, shared, max_logit_diff,
                  artifact, polysem_version, parameters, warnings, layer)
VALUES ($run_id, $group_id, $created_at, $channel, $concepts, $rho, $objective, $sources, $shared, $max_logit_diff,
        $artifact, $polysem_version, $parameters, $warnings,
        coalesce($layer, (SELECT value ->> '$' FROM store_meta WHERE key = 'layer')));

-- name: insert_rho_score*!
-- Eq. 6 at one rho of a run.
INSERT INTO rho_scores (run_id, rho, objective_value, separated, n_sources, skipped)
VALUES ($run_id, $rho, $objective_value, $separated, $n_sources, $skipped);

-- name: delete_evaluations!
-- Remove a run's evaluation (before recording a new one).
DELETE FROM evaluations WHERE run_id = $run_id;

-- name: insert_evaluation*!
-- One concept's evaluation of a run.
INSERT INTO evaluations (run_id, concept, tau, n_images, fractions, frac_residual, bias_only, evaluated_at, selection)
VALUES ($run_id, $concept, $tau, $n_images, $fractions, $frac_residual, $bias_only, $evaluated_at, $selection);

-- name: delete_verification!
-- Remove a run's verification (before recording a new one).
DELETE FROM verifications WHERE run_id = $run_id;

-- name: insert_verification!
-- A run's verification.
INSERT INTO verifications (run_id, tau, p, gamma, classes, n_images, units, relevant_classes, min_cosines, resolved,
                           verified_at)
VALUES ($run_id, $tau, $p, $gamma, $classes, $n_images, $units, $relevant_classes, $min_cosines, $resolved,
        $verified_at);

-- name: visualization_images
-- The PNGs of the visualisations with these settings (the ones a new visualisation replaces).
SELECT image FROM visualizations
WHERE run_id IS NOT DISTINCT FROM $run_id AND layer IS NOT DISTINCT FROM getvariable('polysem_layer') AND channel = $channel AND method = $method AND steps = $steps
  AND size = $size AND seed = $seed;

-- name: delete_visualizations!
-- Remove the visualisations with these settings.
DELETE FROM visualizations
WHERE run_id IS NOT DISTINCT FROM $run_id AND layer IS NOT DISTINCT FROM getvariable('polysem_layer') AND channel = $channel AND method = $method AND steps = $steps
  AND size = $size AND seed = $seed;

-- name: insert_visualization*!
-- One unit's visualisation at one seed (image NULL and failure its reason when it failed).
INSERT INTO visualizations (run_id, channel, unit, method, steps, size, seed, device, image, act_original, act_c1,
                            act_c2, act_r, selectivity, seconds, created_at, act_concepts, failure, layer)
VALUES ($run_id, $channel, $unit, $method, $steps, $size, $seed, $device, $image, $act_original, $act_c1,
        $act_c2, $act_r, $selectivity, $seconds, $created_at, $act_concepts, $failure, getvariable('polysem_layer'));

-- name: delete_channel_concepts!
-- Remove the concepts recorded at one parameter set.
DELETE FROM channel_concepts
WHERE tau = $tau AND p = $p AND gamma = $gamma AND split = $split AND correct_only = $correct_only
  AND layer IS NOT DISTINCT FROM getvariable('polysem_layer');

-- name: insert_channel_concepts*!
-- One polysemantic channel's concepts at one parameter set.
INSERT INTO channel_concepts (tau, p, gamma, split, correct_only, channel, concepts, names, sizes, min_cosine,
                              computed_at, layer)
VALUES ($tau, $p, $gamma, $split, $correct_only, $channel, $concepts, $names, $sizes, $min_cosine, $computed_at,
        getvariable('polysem_layer'));

-- name: put_class_similarity*!
-- The WordNet path similarity of one class pair.
INSERT OR REPLACE INTO class_similarity (class1, class2, path_similarity) VALUES ($class1, $class2, $path_similarity);

-- name: forget_class_similarity!
-- Remove the WordNet similarities of pairs with one of $classes (their wnid changed).
DELETE FROM class_similarity WHERE list_contains($classes, class1) OR list_contains($classes, class2);
