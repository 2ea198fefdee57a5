-- Sample data: the customers table of a CRM database. `syncengine init sqlite` runs this script
-- into data/crm.db; point the crm source at your own database instead.
CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    status TEXT NOT NULL,
    credit_limit_cents INTEGER,
    updated_at TEXT NOT NULL
);
INSERT INTO customers VALUES ('C001', 'Acme Freight', 'ops@acme.example', 'A', 1500000, '2024-03-19T16:42:50+00:00');
INSERT INTO customers VALUES ('C002', 'Bélanger  Transport', NULL, 'A', 850050, '2024-04-02T09:05:00+00:00');
INSERT INTO customers VALUES ('C003', 'Nordic Haulage', 'info@nordic.example', 'I', 0, '2024-01-15T12:00:00+00:00');
INSERT INTO customers VALUES ('C004', 'Test Account', 'test@example.com', 'X', 0, '2024-01-01T00:00:00+00:00');
