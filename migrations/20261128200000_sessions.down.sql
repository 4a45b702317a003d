DROP TABLE session_rotated_tokens;
DROP TABLE sessions;
