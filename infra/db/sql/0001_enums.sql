-- The seed's enumerated types.
CREATE TYPE user_role AS ENUM ('admin', 'user');
-- Only e-mail logins exist; a provider is added (ALTER TYPE ... ADD VALUE) when one is built.
CREATE TYPE auth_provider AS ENUM ('email');
CREATE TYPE server_type AS ENUM ('linux', 'windows', 'macos', 'other');
CREATE TYPE server_category AS ENUM ('physical', 'virtual', 'container', 'cloud');
