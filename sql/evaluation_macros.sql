-- name: channel_activation
-- scalar: the spatially summed activation of a conv channel on one image, from the image's stored input sums and no model pass (docs/method.md section 3): weight . input_sum + bias x positions. weight is a `layer_weights.weight` row (or a rewired unit's, flattened the same way), input_sum and positions the image's `samples` columns (S(x) and the output positions); a NULL bias counts as 0.
CREATE OR REPLACE MACRO channel_activation(weight, input_sum, bias, positions) AS
    list_inner_product(weight::DOUBLE[], input_sum::DOUBLE[]) + coalesce(bias, 0) * positions;

-- name: channel_top_images
-- The n most activating images of channel ch of the stored model over every class of a split (ties by image id): rank (1..n), image_id, path, class_id, name, activation (channel_activation, no model pass).
CREATE OR REPLACE MACRO channel_top_images(ch, n, split_name := 'val') AS TABLE
SELECT row_number() OVER (ORDER BY a.activation DESC, a.image_id) AS rank, a.image_id, a.path, a.class_id, c.name,
       a.activation
FROM (SELECT s.image_id, s.path, s.target AS class_id,
             channel_activation(lw.weight, s.input_sum, lw.bias, s.positions) AS activation
      FROM layer_samples s JOIN layer_weights lw ON lw.channel = ch
      WHERE s.split = split_name) a
JOIN classes c USING (class_id)
QUALIFY rank <= n
ORDER BY rank;

-- name: run_unit_weights
-- The weight rows of a run's units, from `runs.sources` and the stored weight (one row): w0 (the original channel), wj (c'_1..c'_k: each keeps its own l-1 channels' and the shared ones' weights, 0 elsewhere), wr (the residual r: the shared ones only), b (the bias, 0 when NULL; every unit carries it), flattened like `layer_weights.weight`.
CREATE OR REPLACE MACRO run_unit_weights(run) AS TABLE
WITH weights AS (
    SELECT lw.weight::DOUBLE[] AS w0, coalesce(lw.bias, 0) AS b, li."window" AS k, r.sources,
           -- owner of each l-1 channel: the concept (1..k) it feeds alone, 0 when shared
           list_transform(range(li.in_channels),
                          lambda i: coalesce(list_position(list_transform(r.sources, lambda s: list_contains(s, i)), true), 0))
               AS owner
    FROM runs r JOIN layer_weights lw ON lw.channel = r.channel CROSS JOIN layer_info li
    WHERE r.run_id = run
)
SELECT w0, b,
       -- c'_j keeps its own and the shared inputs; r keeps the shared ones
       list_transform(range(1, len(sources) + 1),
                      lambda j: list_transform(w0, lambda x, i: CASE WHEN owner[(i - 1) // k + 1] IN (0, j) THEN x ELSE 0 END))
           AS wj,
       list_transform(w0, lambda x, i: CASE WHEN owner[(i - 1) // k + 1] = 0 THEN x ELSE 0 END) AS wr
FROM weights;

-- name: run_activations
-- Per image of a run's concept classes in a split: concept (1..k), relative_attribution of the original channel, and the spatially summed activations of the original channel, of c'_1..c'_k (the list `activations`; activation1 and activation2 are its first two), of the residual r, and bias_term (the bias times the positions). All are linear in input_sum, so no model runs.
CREATE OR REPLACE MACRO run_activations(run, split_name := 'val') AS TABLE
WITH r AS (
    SELECT * FROM runs WHERE run_id = run
),
masked AS (
    SELECT * FROM run_unit_weights(run)
),
images AS (
    SELECT s.image_id, s.path, s.target,
           list_position(list_transform(r.concepts, lambda c: list_contains(c, s.target)), true) AS concept,
           relative_attribution(s.attribution[r.channel + 1], s.positive_sum) AS relative_attribution,
           s.input_sum::DOUBLE[] AS x, m.b * s.positions AS bias_term, m.w0, m.wj, m.wr
    FROM layer_samples s CROSS JOIN r CROSS JOIN masked m
    WHERE s.split = split_name AND list_contains(flatten(r.concepts), s.target)
)
SELECT image_id, path, target, concept, relative_attribution,
       list_inner_product(w0, x) + bias_term AS activation,
       list_transform(wj, lambda w: list_inner_product(w, x) + bias_term) AS activations,
       activations[1] AS activation1,
       activations[2] AS activation2,
       list_inner_product(wr, x) + bias_term AS activation_residual,
       bias_term
FROM images;

-- name: clamped_relative_attributions
-- The authors' relative attribution (their get_results.py) per image, from sums polysem computes with a model pass (polysem/method/evaluation.py): image_id and relative_attribution(channel_sum, total), where channel_sum = sum over positions of max(a_hw, 0) for the run's channel and total = the same summed over every channel of layer l (a_hw: gradient x activation at position hw). Ineq. 2 clamps the spatial sums instead: the two differ where a channel's positions have mixed signs.
CREATE OR REPLACE MACRO clamped_relative_attributions(image_ids, channel_sums, totals) AS TABLE
SELECT image_ids[i] AS image_id, relative_attribution(channel_sums[i], totals[i]) AS relative_attribution
FROM range(1, len(image_ids) + 1) t(i);

-- name: selected_activations
-- run_activations with relative_attribution by the evaluation's selection: 'ineq2' (the paper's Ineq. 2 on the stored spatial sums, the default, as screening uses) or 'authors' (clamped per position before the spatial sum: clamped_relative_attributions of the given per-image sums; an image not given has none).
CREATE OR REPLACE MACRO selected_activations(run, split_name := 'val', selection := 'ineq2', image_ids := [],
                                             channel_sums := [], totals := []) AS TABLE
SELECT a.* REPLACE (CASE selection WHEN 'ineq2' THEN a.relative_attribution
                                   WHEN 'authors' THEN g.relative_attribution
                                   ELSE error('unknown selection ' || selection || '; use ineq2 or authors')
                    END AS relative_attribution)
FROM run_activations(run, split_name := split_name) a
LEFT JOIN clamped_relative_attributions(image_ids, channel_sums, totals) g USING (image_id);

-- name: evaluation_summary
-- docs/method.md section 7 per concept of a run: over its images whose original channel has relative attribution >= tau (by `selection`, see selected_activations: Ineq. 2 by default), n_images, the mean fraction of the original activation on each of c'_1..c'_k (`fractions`; frac1, frac2 are the first two) and on r, and bias_only (the original channel carries only its bias on every such image).
CREATE OR REPLACE MACRO evaluation_summary(run, tau := 0.03, split_name := 'val', selection := 'ineq2', image_ids := [],
                                           channel_sums := [], totals := []) AS TABLE
WITH selected AS (
    SELECT * FROM selected_activations(run, split_name := split_name, selection := selection, image_ids := image_ids,
                                       channel_sums := channel_sums, totals := totals)
    WHERE relative_attribution >= tau
),
per_unit AS (
    SELECT concept, generate_subscripts(activations, 1) AS unit, unnest(activations) / activation AS fraction
    FROM selected
),
fractions AS (
    SELECT concept, list(mean_fraction ORDER BY unit) AS fractions
    FROM (SELECT concept, unit, avg(fraction) AS mean_fraction FROM per_unit GROUP BY concept, unit)
    GROUP BY concept
)
SELECT s.concept, count(*) AS n_images, any_value(f.fractions) AS fractions,
       any_value(f.fractions)[1] AS frac1, any_value(f.fractions)[2] AS frac2,
       avg(s.activation_residual / s.activation) AS frac_residual,
       bool_and(s.activation = s.bias_term) AS bias_only
FROM selected s JOIN fractions f USING (concept)
GROUP BY s.concept
ORDER BY s.concept;

-- name: unit_verdicts
-- The verdict of `polysem verify` on each new unit c'_j of a run, from its recorded facts (the one place it is decided): unit, concept (j), own_classes / other_concept_classes / unrelated_classes (its relevant classes grouped: of concept j, of another concept of the run, of none), min_cosine (lowest ARV cosine among its relevant classes), serves (relevant for a class of concept j and for none of another concept), monosemantic (no two relevant classes below gamma), reason.
CREATE OR REPLACE MACRO unit_verdicts(concepts, relevant_classes, min_cosines, gamma) AS TABLE
WITH units AS (
    SELECT j, relevant_classes[j] AS rel, concepts[j] AS own, (min_cosines::DOUBLE[])[j] AS min_cosine,
           flatten(concepts) AS every
    FROM range(1, len(concepts) + 1) t(j)
),
grouped AS (
    SELECT j, min_cosine,
           list_filter(rel, lambda c: list_contains(own, c)) AS own_classes,
           list_filter(rel, lambda c: NOT list_contains(own, c) AND list_contains(every, c)) AS other_concept_classes,
           list_filter(rel, lambda c: NOT list_contains(every, c)) AS unrelated_classes
    FROM units
)
SELECT 'c' || j AS unit, j::INTEGER AS concept, own_classes, other_concept_classes, unrelated_classes, min_cosine,
       len(own_classes) > 0 AND len(other_concept_classes) = 0 AS serves,
       coalesce(min_cosine >= gamma, true) AS monosemantic,
       CASE
           WHEN len(own_classes) = 0 THEN 'relevant for no class of concept ' || j
           WHEN len(other_concept_classes) > 0
               THEN 'also relevant for class ' || array_to_string(other_concept_classes, ', ') || ' of another concept'
           WHEN min_cosine < gamma
               THEN 'two of its classes have ARV cosine ' || round(min_cosine, 3) || ' < gamma ' || gamma
           ELSE 'serves concept ' || j || ' only, monosemantic'
       END AS reason
FROM grouped
ORDER BY j;

-- name: verification_verdicts
-- unit_verdicts of every recorded verification (run_id first), stores of every format alike: the verdict is recomputed from the recorded facts, so a verification recorded under an older rule reads the current one.
CREATE OR REPLACE VIEW verification_verdicts AS
SELECT v.run_id, u.*
FROM verifications v JOIN runs r USING (run_id),
     unit_verdicts(r.concepts, v.relevant_classes, v.min_cosines, v.gamma) u;

-- name: run_summary
-- One row per run with its evaluation: the paper's quantitative table (per concept j: its images and the fraction of their activation on c'_j and on the other new channels), the selection of its recorded evaluation ('ineq2' or 'authors'), and resolved: every new unit serves its concept and is monosemantic (verification_verdicts; NULL until `polysem verify` ran).
CREATE OR REPLACE VIEW run_summary AS
SELECT r.run_id, r.created_at, r.channel, r.concepts, r.rho, r.objective,
       list_transform(r.sources, lambda s: len(s)) AS n_sources, len(r.shared) AS n_shared, r.max_logit_diff,
       r.warnings,
       list(e.n_images ORDER BY e.concept) FILTER (e.concept IS NOT NULL) AS n_images,
       list(e.fractions ORDER BY e.concept) FILTER (e.concept IS NOT NULL) AS fractions,
       list(e.bias_only ORDER BY e.concept) FILTER (e.concept IS NOT NULL) AS bias_only,
       any_value(e.selection) AS selection,
       (SELECT bool_and(u.serves AND u.monosemantic) FROM verification_verdicts u WHERE u.run_id = r.run_id)
           AS resolved
FROM runs r
LEFT JOIN evaluations e ON e.run_id = r.run_id
GROUP BY ALL
ORDER BY r.created_at, r.channel;

-- name: unit_top_images
-- The n most activating images of each unit of a run (original, then c'_1..c'_k) over every class of a split, not only the run's concept classes (ties by image id): unit, rank (1..n), image_id, path, class_id, name, concept (the run's concept the class belongs to, 1..k; NULL for a class of no concept), activation (channel_activation of the unit's weight row, run_unit_weights; no model pass).
CREATE OR REPLACE MACRO unit_top_images(run, n, split_name := 'val') AS TABLE
WITH units AS (
    SELECT 0 AS unit_index, w0 AS w, b FROM run_unit_weights(run)
    UNION ALL
    SELECT j, u.wj[j], u.b FROM run_unit_weights(run) u, range(1, len(u.wj) + 1) t(j)
),
ranked AS (
    SELECT u.unit_index, s.image_id, s.path, s.target AS class_id,
           channel_activation(u.w, s.input_sum, u.b, s.positions) AS activation,
           row_number() OVER (PARTITION BY u.unit_index ORDER BY activation DESC, s.image_id) AS rank
    FROM layer_samples s CROSS JOIN units u
    WHERE s.split = split_name
    QUALIFY rank <= n
)
SELECT CASE WHEN x.unit_index = 0 THEN 'original' ELSE 'c' || x.unit_index END AS unit, x.rank, x.image_id, x.path,
       x.class_id, c.name,
       list_position(list_transform(r.concepts, lambda k: list_contains(k, x.class_id)), true) AS concept,
       x.activation
FROM ranked x JOIN classes c USING (class_id) CROSS JOIN (SELECT concepts FROM runs WHERE run_id = run) r
ORDER BY x.unit_index, x.rank;

-- name: unit_class_histogram
-- The class histogram of each unit's n most activating images of a split (unit_top_images; all of the split's images when it has fewer than n): unit (original, c1..ck), class_id, name, concept (1..k, NULL for none), n_images (of the unit's top n), share (n_images over the unit's top images), most frequent class first.
CREATE OR REPLACE MACRO unit_class_histogram(run, n, split_name := 'val') AS TABLE
SELECT unit, class_id, any_value(name) AS name, any_value(concept) AS concept, count(*) AS n_images,
       count(*) / any_value(n_top) AS share
FROM (SELECT *, count(*) OVER (PARTITION BY unit) AS n_top FROM unit_top_images(run, n, split_name := split_name))
GROUP BY unit, class_id
ORDER BY CASE WHEN unit = 'original' THEN 0 ELSE unit[2:]::INTEGER END, n_images DESC, class_id;
