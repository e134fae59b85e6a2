-- One role and one database per agent: no agent's store is readable with another's login.
-- Runs once, when the postgres volume is new. Change the passwords here and in each agent's
-- database_url (config/<name>/mailagent.toml).
CREATE ROLE alice LOGIN PASSWORD 'change-me-alice';
CREATE DATABASE alice OWNER alice;
REVOKE ALL ON DATABASE alice FROM PUBLIC;

CREATE ROLE bob LOGIN PASSWORD 'change-me-bob';
CREATE DATABASE bob OWNER bob;
REVOKE ALL ON DATABASE bob FROM PUBLIC;
