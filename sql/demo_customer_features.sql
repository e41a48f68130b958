-- The demo's feature table: purchase behaviour plus who the customer is.
SELECT
    p.*,
    c.age_band,
    c.region,
    c.acquisition_channel,
    (date_part('epoch', CAST(${as_of} AS TIMESTAMP)) - date_part('epoch', CAST(c.signup_date AS TIMESTAMP))) / 86400.0 AS days_since_signup
FROM purchase_features p
JOIN customers c ON c.customer_id = p.customer_id
