-- Upgrade of tenancy from 0.1.0 to 0.2.0.
-- Every change to the SQL surface since 0.1.0 is repeated here;
-- tests/test_upgrade.py checks that an upgraded install equals a fresh one.
\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.2.0'" to load this file. \quit
