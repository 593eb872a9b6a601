-- One database per partnerhub service (DESIGN.md §6): each service owns its event store
-- and read models and never reads another's tables; they share only events.
-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d),
-- as POSTGRES_USER, which owns the databases. Schema is created by each service's Alembic
-- migrations at start-up.
CREATE DATABASE gateway;
CREATE DATABASE onboarding;
CREATE DATABASE lifecycle;
CREATE DATABASE metrics;
