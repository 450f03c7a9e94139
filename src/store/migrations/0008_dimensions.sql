-- token-console schema: the dimensions usage is grouped by, recorded with every call.

-- The end user a call was made for (the x-token-console-user header, OpenAI's
-- safety_identifier / user, Anthropic's metadata.user_id), at most 128 bytes; NULL when none.
ALTER TABLE calls ADD COLUMN user_id TEXT;
-- The configured provider that served the call; '' when none did (refused before routing).
ALTER TABLE calls ADD COLUMN provider TEXT NOT NULL DEFAULT '';
-- Where the record came from: 'gateway' for the gateway's own calls, else an ingested source.
ALTER TABLE calls ADD COLUMN source TEXT NOT NULL DEFAULT 'gateway';
