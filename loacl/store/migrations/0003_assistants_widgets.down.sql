DROP INDEX conversations_user;
DROP INDEX conversations_widget;
DROP TABLE conversations;
DROP INDEX widgets_assistant;
DROP INDEX widgets_owner;
DROP TABLE widgets;
DROP INDEX assistants_owner;
DROP TABLE assistants;
