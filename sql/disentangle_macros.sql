-- name: concept_arv
-- The ARV of one channel for a concept made of one or more classes: the mean over the union of their images (channel, n_images, arv).
CREATE OR REPLACE MACRO concept_arv(channel_id, class_ids, split_name := 'train') AS TABLE
WITH means AS (
    SELECT class_id, n_images, generate_subscripts(mean_input_sum, 1) AS i, unnest(mean_input_sum) AS m
    FROM class_means_of(split_name := split_name)
    WHERE list_contains(class_ids, class_id)
),
pooled AS (
    -- a class mean weighted by its image count: the mean over the union of the images
    SELECT i, sum(m * n_images) / sum(n_images) AS m, sum(n_images) AS n FROM means GROUP BY i
),
pooled_list AS (
    SELECT any_value(n)::BIGINT AS n_images, list(m ORDER BY i) AS mean_input_sum FROM pooled
)
SELECT w.channel, p.n_images, arv_of(w.weight, p.mean_input_sum, li."window") AS arv
FROM layer_weights w CROSS JOIN layer_info li CROSS JOIN pooled_list p
WHERE w.channel = channel_id;

-- name: weight_arv_cosine
-- For any weight row of layer l's shape (e.g. a disentangled channel c'_j; flattened like input_sum) and a list of classes: class1 < class2 and the cosine of their ARVs under that row (the ARV identity: no model pass). Used by `polysem verify`.
CREATE OR REPLACE MACRO weight_arv_cosine(weight, class_ids, split_name := 'train') AS TABLE
WITH arvs AS MATERIALIZED (
    SELECT m.class_id, arv_of(weight::DOUBLE[], m.mean_input_sum, li."window") AS arv
    FROM class_means_of(split_name := split_name) m CROSS JOIN layer_info li
    WHERE list_contains(class_ids, m.class_id)
)
SELECT a.class_id AS class1, b.class_id AS class2, list_cosine_similarity(a.arv, b.arv) AS cosine
FROM arvs a JOIN arvs b ON a.class_id < b.class_id
ORDER BY class1, class2;
