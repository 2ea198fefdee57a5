-- A small ERP for the erp-to-crm sample: sales reps, customers, and each customer's contacts and
-- addresses. Build the database beside pipeline.yml (see README.md):
--
--     sqlite3 erp.db < erp.sql
--
-- Codes are the ERP's own and become the CRM's codes ({entity}_ID). Amounts are kept as text so
-- that they stay exact; dates are YYYY-MM-DD.

PRAGMA foreign_keys = ON;

CREATE TABLE sales_rep (
    rep_code   TEXT PRIMARY KEY,
    full_name  TEXT NOT NULL,
    email      TEXT
);

CREATE TABLE customer (
    cust_no       TEXT PRIMARY KEY,
    account_code  TEXT NOT NULL,              -- the accounting code (CRM: CodeCustomer)
    company_name  TEXT NOT NULL,
    credit_limit  TEXT,                       -- exact decimal, e.g. '25000.00'
    employees     INTEGER,
    status        TEXT NOT NULL DEFAULT 'A',  -- A active, I inactive
    opened_on     TEXT,                       -- YYYY-MM-DD
    rep_code      TEXT REFERENCES sales_rep (rep_code)
);

CREATE TABLE contact (
    contact_no  TEXT PRIMARY KEY,
    cust_no     TEXT NOT NULL REFERENCES customer (cust_no),
    first_name  TEXT,
    last_name   TEXT NOT NULL,
    email       TEXT,
    phone       TEXT,
    birth_date  TEXT                          -- YYYY-MM-DD
);

CREATE TABLE address (
    address_no  TEXT PRIMARY KEY,
    cust_no     TEXT NOT NULL REFERENCES customer (cust_no),
    street      TEXT,
    zip         TEXT,
    city        TEXT NOT NULL,
    country     TEXT                          -- ISO 3166 alpha-2
);

INSERT INTO sales_rep (rep_code, full_name, email) VALUES
    ('REP01', 'Claire Dumont', 'claire.dumont@erp.example'),
    ('REP02', 'Marco Bellini', 'marco.bellini@erp.example'),
    ('REP03', 'Jonas Keller', NULL);

INSERT INTO customer (cust_no, account_code, company_name, credit_limit, employees, status, opened_on, rep_code) VALUES
    ('C1001', '411ALPINE', 'Alpine Outfitters', '25000.00', 42, 'A', '2015-03-19', 'REP01'),
    ('C1002', '411BELANGER', 'Bélanger Transport', '8500.50', 120, 'A', '2018-07-02', 'REP02'),
    ('C1003', '411NORDIC', 'Nordic Haulage', '0', 7, 'I', '2020-01-15', 'REP03'),
    ('C1004', '411SMITHJ', 'Smith, Jones & Co', '2500', NULL, 'A', '2021-11-30', 'REP01'),
    ('C1005', '411VERDE', 'Verde Garden Supplies', '12000.75', 18, 'A', '2022-05-09', NULL);

INSERT INTO contact (contact_no, cust_no, first_name, last_name, email, phone, birth_date) VALUES
    ('K2001', 'C1001', 'Anna', 'Berger', 'anna.berger@alpine.example', '+41 44 555 01 01', '1981-04-12'),
    ('K2002', 'C1001', 'Luca', 'Frei', 'luca.frei@alpine.example', '+41 44 555 01 02', NULL),
    ('K2003', 'C1001', NULL, 'Accounts payable', 'ap@alpine.example', NULL, NULL),
    ('K2004', 'C1002', 'Sophie', 'Bélanger', 'sophie@belanger.example', '+1 514 555 0134', '1975-09-30'),
    ('K2005', 'C1002', 'Hugo', 'Tremblay', NULL, '+1 514 555 0135', NULL),
    ('K2006', 'C1003', 'Ingrid', 'Lund', 'ingrid.lund@nordic.example', '+46 8 555 010 10', '1990-02-28'),
    ('K2007', 'C1004', 'Peter', 'Jones', 'billing@smithjones.example', '+1 212 555 0199', NULL);

INSERT INTO address (address_no, cust_no, street, zip, city, country) VALUES
    ('A3001', 'C1001', 'Bahnhofstrasse 12', '8001', 'Zürich', 'CH'),
    ('A3002', 'C1001', 'Industrieweg 4', '8404', 'Winterthur', 'CH'),
    ('A3003', 'C1002', '1200 rue Sherbrooke O', 'H3A 1H6', 'Montréal', 'CA'),
    ('A3004', 'C1003', 'Hamngatan 3', '111 47', 'Stockholm', 'SE'),
    ('A3005', 'C1004', '350 Fifth Avenue', '10118', 'New York', 'US'),
    ('A3006', 'C1005', 'Via Roma 21', '20121', 'Milano', 'IT');
