pipeline {
    agent none
    stages {
        stage('Build') {
            steps { sh 'make' }
        }
    }
}
